//! Data parallelism ([`TrainerBuilder::process_group`](super::TrainerBuilder::process_group)):
//! every rank draws the same global prompt batch and keeps a contiguous share of whole groups,
//! so group statistics stay local; mini-batches are cut from one shuffle of the global group
//! ids (the same seed on every rank), each rank training on its groups of each mini-batch;
//! batch counts and gradients are summed over the ranks before the loss normalisation and the
//! optimizer step, so the update equals the single-process update on the whole batch; a
//! non-finite loss or norm on any rank skips the step on all; metrics are merged over the ranks.

use std::ops::Range;

use rl_core::dist::{ProcessGroup, ReduceOp};
use rl_core::masked::Moments;
use rl_core::metrics::Reduce;
use rl_core::{FinishReason, Metrics, Sample};
use serde::{Deserialize, Serialize};

use crate::Result;

/// The contiguous share of `groups` global groups that `rank` of `world` keeps: the first
/// `groups % world` ranks get one more.
pub(super) fn share(groups: usize, rank: usize, world: usize) -> Range<usize> {
    let (base, extra) = (groups / world, groups % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// `local` whitening moments merged with every rank's, in rank order (the same bits on every
/// rank): the batch-wide statistics of a whitening estimator under data parallelism.
pub(super) fn merge_moments(pg: &mut dyn ProcessGroup, local: Moments) -> rl_core::Result<Moments> {
    let all = pg.all_gather_bytes(&local.to_bytes())?;
    all.iter().enumerate().try_fold(Moments::default(), |acc, (rank, b)| {
        let m = Moments::from_bytes(b).ok_or_else(|| rl_core::dist::DistError::Mismatch {
            rank,
            op: "all_gather_bytes (whitening moments)".into(),
            what: format!("{} bytes, expected 24", b.len()),
        })?;
        Ok(acc.merge(m))
    })
}

/// A metric with its reduction, as it crosses the wire.
#[derive(Serialize, Deserialize)]
struct Entry(String, f64, Reduce);

/// Every rank's `(metrics, tokens)` parts, in rank order (so
/// [`Metrics::merge_parts`] gives the same result on every rank).
pub(super) fn gather_parts(
    pg: &mut dyn ProcessGroup,
    parts: &[(Metrics, f64)],
) -> Result<Vec<(Metrics, f64)>> {
    let mine: Vec<(Vec<Entry>, f64)> = parts
        .iter()
        .map(|(m, w)| (m.iter().map(|(k, v)| Entry(k.into(), v, m.reduction(k))).collect(), *w))
        .collect();
    let all = pg.all_gather_bytes(&serde_json::to_vec(&mine)?)?;
    let mut out = Vec::new();
    for bytes in all {
        let theirs: Vec<(Vec<Entry>, f64)> = serde_json::from_slice(&bytes)?;
        for (entries, w) in theirs {
            let mut m = Metrics::new();
            for Entry(k, v, r) in entries {
                m.insert_with(k, v, r);
            }
            out.push((m, w));
        }
    }
    Ok(out)
}

/// What the rollout metrics need of a sample (no text crosses the wire).
#[derive(Serialize, Deserialize)]
struct Row(f32, usize, bool);

/// Every rank's samples (as far as [`crate::metrics::rollout_metrics`] reads them: length and
/// whether the response was truncated) and scores, in rank order.
pub(super) fn gather_rollout(
    pg: &mut dyn ProcessGroup,
    samples: &[Sample],
    scores: &[f32],
) -> Result<(Vec<Sample>, Vec<f32>)> {
    let mine: Vec<Row> = samples
        .iter()
        .zip(scores)
        .map(|(s, &r)| Row(r, s.response_tokens, s.finish == FinishReason::Length))
        .collect();
    let all = pg.all_gather_bytes(&serde_json::to_vec(&mine)?)?;
    let (mut out, mut out_scores) = (Vec::new(), Vec::new());
    for bytes in all {
        for Row(score, tokens, truncated) in serde_json::from_slice::<Vec<Row>>(&bytes)? {
            let finish = if truncated { FinishReason::Length } else { FinishReason::Eos };
            out.push(Sample { response_tokens: tokens, finish, ..Sample::default() });
            out_scores.push(score);
        }
    }
    Ok((out, out_scores))
}

/// The group of a trainer that trains data-parallel over more than one rank.
pub(super) fn dp_of(dist: &mut Option<Box<dyn ProcessGroup>>) -> Option<&mut dyn ProcessGroup> {
    match dist {
        Some(pg) if pg.world_size() > 1 => Some(pg.as_mut()),
        _ => None,
    }
}

/// The sum of `local` over the ranks.
pub(super) fn sum_u64(pg: &mut dyn ProcessGroup, local: u64) -> Result<u64> {
    let mut v = [local];
    pg.all_reduce_u64(&mut v, ReduceOp::Sum)?;
    Ok(v[0])
}

/// The sum of `local` over the ranks.
pub(super) fn sum_f64(pg: &mut dyn ProcessGroup, local: f64) -> Result<f64> {
    let mut v = [local];
    pg.all_reduce_f64(&mut v, ReduceOp::Sum)?;
    Ok(v[0])
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_the_groups_contiguously() {
        for world in 1..5 {
            for groups in 0..11 {
                let parts: Vec<_> = (0..world).map(|r| share(groups, r, world)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, groups);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }
}
