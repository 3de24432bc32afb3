//! Phase 3, **update**: `ppo_epochs` passes of shuffled mini-batches; each mini-batch runs its
//! micro-batches (forward, loss, backward) into the accumulators of [`super::accum`] and takes one
//! optimizer step per model.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rl_core::metrics::Reduce;
use rl_core::rng::mix_seed;
use rl_core::{
    Critic, GlobalCounts, Groups, LossOutput, Metrics, Policy, PolicyLossInput, RolloutBatch,
    TermInput, ValueLossInput,
};

use super::accum::{Accum, UpdateStats, apply};
use super::{SEED_SHUFFLE, Trainer, masked_abs_diff, scalar, select_rows};
use crate::{Result, RolloutCorrection, TrainerError};
use candle_core::Tensor;

impl<P: Policy, C: Critic> Trainer<P, C> {
    /// `ppo_epochs` passes of shuffled mini-batches with gradient accumulation.
    pub(super) fn update(
        &mut self,
        batch: &RolloutBatch,
        adv: &Tensor,
        returns: &Tensor,
        metrics: &mut Metrics,
    ) -> Result<()> {
        let groups = Groups::new(&batch.group_ids)?;
        // Mini-batches are cut from one order of the global groups. In one process that is the
        // batch's groups by index; under data parallelism, the global group ids (this rank keeps
        // a share of them), so every rank takes the same mini-batches and optimizer steps.
        let (total, local): (usize, std::collections::HashMap<usize, usize>) = match self.dp() {
            Some(pg) => {
                let total = super::dist::sum_u64(pg, groups.len() as u64)? as usize;
                (total, (0..groups.len()).map(|g| (groups.id(g), g)).collect())
            }
            None => (groups.len(), (0..groups.len()).map(|g| (g, g)).collect()),
        };
        let per_mini = self.config.mini_batch_groups.unwrap_or(total).min(total).max(1);
        // The rows of every group (global order), for the skip's all-zero fallback.
        let sizes = if self.skips_zero_rows() {
            let mut sizes = vec![0u64; total];
            for (&k, &g) in &local {
                if let Some(n) = sizes.get_mut(k) {
                    *n = groups.rows(g).len() as u64;
                }
            }
            if let Some(pg) = self.dp() {
                pg.all_reduce_u64(&mut sizes, rl_core::dist::ReduceOp::Sum)?;
            }
            sizes
        } else {
            Vec::new()
        };
        let actor_frozen =
            self.critic.is_some() && self.state.step < self.config.critic_warmup_steps as u64;
        let mut acc = UpdateStats::default();
        for epoch in 0..self.config.ppo_epochs {
            let mut order: Vec<usize> = (0..total).collect();
            if self.config.shuffle {
                let seed =
                    mix_seed(self.config.seed, &[SEED_SHUFFLE, self.state.step, epoch as u64]);
                order.shuffle(&mut StdRng::seed_from_u64(seed));
            }
            for chunk in order.chunks(per_mini) {
                let rows: Vec<usize> = chunk
                    .iter()
                    .filter_map(|k| local.get(k))
                    .flat_map(|&g| groups.rows(g).iter().copied())
                    .collect();
                // Under DP a rank may hold none of a mini-batch's groups: it still takes part in
                // the collectives and the optimizer step, with no loss terms of its own.
                let part = if rows.is_empty() {
                    None
                } else {
                    Some((
                        batch.select(&rows)?,
                        select_rows(adv, &rows)?,
                        select_rows(returns, &rows)?,
                    ))
                };
                let head = self.first_micro_batch(chunk, &local, &sizes);
                self.update_mini_batch(part.as_ref(), &head, actor_frozen, &mut acc)?;
            }
        }
        acc.write(metrics, actor_frozen, self.critic.is_some());
        metrics.insert("train/skipped_total", self.state.skipped_updates as f64);
        metrics.insert("train/zero_adv_rows_skipped", acc.skipped_rows as f64);
        Ok(())
    }

    /// One optimizer step per model over the micro-batches of one mini-batch (this rank's part
    /// of it: `(rows, advantages, returns)`, `None` when it has none; `head`: the rows of the
    /// part that are in the mini-batch's first micro-batch, see [`Self::rows_to_train`]).
    fn update_mini_batch(
        &mut self,
        part: Option<&(RolloutBatch, Tensor, Tensor)>,
        head: &[usize],
        actor_frozen: bool,
        acc: &mut UpdateStats,
    ) -> Result<()> {
        let mut counts = match part {
            Some((mini, _, _)) => GlobalCounts::from_batch(&mini.response_mask, &mini.group_ids)?,
            None => GlobalCounts {
                tokens: Some(0.0),
                sequences: Some(0.0),
                groups: Some(0.0),
                group_tokens: Some(Default::default()),
            },
        };
        if let Some(pg) = self.dp() {
            rl_core::dist::all_reduce_counts(pg, &mut counts)?;
        }
        let actor_vars = self.actor_optim.vars().to_vec();
        let critic_vars = self.critic.as_ref().map(|c| c.optim.vars().to_vec()).unwrap_or_default();
        // In-place accumulation needs each weight's gradients to belong to one optimizer.
        let ids: std::collections::HashSet<_> = actor_vars.iter().map(|v| v.id()).collect();
        let disjoint = critic_vars.iter().all(|v| !ids.contains(&v.id()));
        let mut actor = Accum::new(!actor_frozen, disjoint.then_some(&actor_vars[..]))?;
        let mut critic = Accum::new(self.critic.is_some(), disjoint.then_some(&critic_vars[..]))?;
        let t = Instant::now();
        let (rows, skipped) = self.rows_to_train(part.map(|(mini, adv, _)| (mini, adv)), head)?;
        acc.skipped_rows += skipped;
        for idx in rows.chunks(self.config.micro_batch_size) {
            let Some((mini, adv, returns)) = part else { break };
            let idx = idx.to_vec();
            let micro = mini.select(&idx)?;
            let micro_adv = select_rows(adv, &idx)?;
            let tokens = micro.response_lengths()?.iter().sum::<usize>();
            acc.train_tokens += tokens;
            if actor.active() {
                let out = self.actor_loss(&micro, &micro_adv, &counts)?;
                actor.add(out, tokens as f64, &actor_vars, "actor loss")?;
            }
            if let (true, Some(c)) = (critic.active(), &self.critic) {
                let old_values = micro
                    .values
                    .as_ref()
                    .ok_or_else(|| TrainerError::config("critic", "no rollout values"))?;
                let values = c.critic.values(&micro)?;
                let input = ValueLossInput {
                    values: &values,
                    old_values,
                    returns: &select_rows(returns, &idx)?,
                    response_mask: &micro.response_mask,
                    counts: Some(&counts),
                };
                let out = c.loss.compute(&input)?;
                critic.add(out, tokens as f64, &c.critic.trainable_vars(), "critic loss")?;
            }
        }
        acc.train_s += t.elapsed().as_secs_f64();

        let t = Instant::now();
        if actor.enabled {
            let cfg = self.config.actor.clone();
            let dp = super::dist::dp_of(&mut self.dist);
            if let Some(update) =
                apply(&mut actor, &mut self.actor_optim, &cfg, self.state.actor_updates, dp)?
            {
                self.state.actor_updates += 1;
                acc.actor.push(update);
            } else {
                self.skip(actor.failure.unwrap_or("actor grad norm"))?;
            }
        }
        if let (true, Some(c)) = (critic.enabled, self.critic.as_mut()) {
            let cfg = self.config.critic.clone();
            let dp = super::dist::dp_of(&mut self.dist);
            if let Some(update) =
                apply(&mut critic, &mut c.optim, &cfg, self.state.critic_updates, dp)?
            {
                self.state.critic_updates += 1;
                acc.critic.push(update);
            } else {
                self.skip(critic.failure.unwrap_or("critic grad norm"))?;
            }
        }
        acc.optimizer_s += t.elapsed().as_secs_f64();
        Ok(())
    }

    /// `true` when the update leaves out rows whose advantages are all zero
    /// ([`crate::TrainerConfig::skip_zero_advantage_rows`]): nothing but the policy loss reads
    /// them (no critic, no extra term) and the loss declares them inert. The same on every rank.
    fn skips_zero_rows(&self) -> bool {
        self.config.skip_zero_advantage_rows
            && self.critic.is_none()
            && self.terms.is_empty()
            && self.policy_loss.zero_advantage_rows_inert()
    }

    /// The rows of this rank's part of a mini-batch (the groups `chunk`, global ids, in order;
    /// `local`: global id -> this rank's group index) that are among the mini-batch's first
    /// `micro_batch_size` rows: the part's row indices, given every group's row count `sizes`
    /// (by global id; empty when no rows are skipped).
    fn first_micro_batch(
        &self,
        chunk: &[usize],
        local: &std::collections::HashMap<usize, usize>,
        sizes: &[u64],
    ) -> Vec<usize> {
        let (mut head, mut at, mut mine) = (Vec::new(), 0usize, 0usize);
        if sizes.is_empty() {
            return head;
        }
        for &k in chunk {
            let n = sizes.get(k).map_or(0, |&n| n as usize);
            if local.contains_key(&k) {
                let lead = self.config.micro_batch_size.saturating_sub(at).min(n);
                head.extend(mine..mine + lead);
                mine += n;
            }
            at += n;
        }
        head
    }

    /// The rows of this rank's part `(mini, adv)` of a mini-batch (advantages `(B, T)`; `None`:
    /// no rows) that the micro-batches run, and how many rows of the whole mini-batch (every
    /// rank's) are left out. All of them run unless [`Self::skips_zero_rows`]; then the rows
    /// whose advantages are not all exactly zero on their valid tokens (a NaN counts as non-zero
    /// and fails the update as before), and when no rank has such a row, the rows of the
    /// mini-batch's first micro-batch (`head`, this rank's share of them), so the optimizer steps
    /// on exact zero gradients. Every rank calls it (one collective under data parallelism).
    fn rows_to_train(
        &mut self,
        part: Option<(&RolloutBatch, &Tensor)>,
        head: &[usize],
    ) -> Result<(Vec<usize>, usize)> {
        let len = part.map_or(0, |(mini, _)| mini.len());
        let all: Vec<usize> = (0..len).collect();
        if !self.skips_zero_rows() {
            return Ok((all, 0));
        }
        let keep: Vec<usize> = match part {
            Some((mini, adv)) => {
                let mass = adv.abs()?.mul(&mini.response_mask)?.sum(1)?.to_vec1::<f32>()?;
                all.iter().copied().filter(|&r| mass[r] != 0.0).collect()
            }
            None => Vec::new(),
        };
        // [rows kept, rows, rows of the first micro-batch] over the ranks.
        let mut n = [keep.len() as u64, len as u64, head.len() as u64];
        if let Some(pg) = self.dp() {
            pg.all_reduce_u64(&mut n, rl_core::dist::ReduceOp::Sum)?;
        }
        let [kept, rows, lead] = n.map(|v| v as usize);
        if kept == 0 {
            return Ok((head.to_vec(), rows - lead));
        }
        Ok((keep, rows - kept))
    }

    /// Policy loss + extra terms (KL, entropy bonus, ...) for one micro-batch.
    fn actor_loss(
        &self,
        micro: &RolloutBatch,
        adv: &Tensor,
        counts: &GlobalCounts,
    ) -> Result<LossOutput> {
        let with_entropy = self.terms.iter().any(|t| t.needs_entropy());
        let lp = self.policy.log_probs(micro, with_entropy)?;
        let current = lp.log_probs.detach();
        let old = if self.on_policy { &current } else { &micro.old_log_probs };
        // Rollout correction: truncated IS weights π_old / π_sampler of an external sampler.
        let external = self.sampler.as_ref().is_some_and(|s| s.is_external());
        let is_weights = match (&self.config.rollout_correction, &micro.rollout_log_probs) {
            (RolloutCorrection::Tis(tis), Some(rollout)) if external => {
                Some(tis.weights(old, rollout, &micro.response_mask)?)
            }
            _ => None,
        };
        let mut input = PolicyLossInput::new(&lp.log_probs, old, adv, &micro.response_mask);
        input.group_ids = Some(&micro.group_ids);
        input.counts = Some(counts);
        input.rollout_is_weights = is_weights.as_ref().map(|(w, _)| w);
        let LossOutput { mut loss, mut metrics } = self.policy_loss.compute(&input)?;
        if let Some((_, m)) = &is_weights {
            metrics.extend_prefixed("", m);
        }
        metrics.insert_with("pg_loss", scalar(&loss)?, Reduce::Sum);
        if self.on_policy {
            // The sampler/trainer mismatch a recompute would have reported.
            let diff = masked_abs_diff(&current, &micro.old_log_probs, &micro.response_mask)?;
            metrics.insert("log_prob_abs_diff", diff);
        }
        for term in &self.terms {
            let out = term.compute(&TermInput {
                log_probs: &lp.log_probs,
                entropy: lp.entropy.as_ref(),
                old_log_probs: old,
                ref_log_probs: micro.ref_log_probs.as_ref(),
                response_mask: &micro.response_mask,
                group_ids: &micro.group_ids,
                counts,
            })?;
            let prefix = format!("{}/", term.name());
            metrics.extend_prefixed(&prefix, &out.metrics);
            metrics.insert_with(format!("{prefix}loss"), scalar(&out.loss)?, Reduce::Sum);
            loss = (loss + out.loss)?;
        }
        Ok(LossOutput { loss, metrics })
    }
}
