//! Phase 2, **prepare**: everything the update needs that the sampler did not give: old
//! log-probs from the training forward, reference log-probs, critic values, KL in the reward, and
//! the advantages.

use std::time::Instant;

use rl_core::{AdvantageInput, Advantages, Critic, Groups, Metrics, Policy, Rewards, RolloutBatch};

use super::{Trainer, by_micro_batch, masked_abs_diff};
use crate::Result;

impl<P: Policy, C: Critic> Trainer<P, C> {
    /// Fills `batch.old_log_probs` (recomputed), `ref_log_probs` and `values`, applies KL in the
    /// reward and estimates the advantages from `scores` (one per response).
    pub(super) fn prepare(
        &mut self,
        batch: &mut RolloutBatch,
        scores: &[f32],
        metrics: &mut Metrics,
    ) -> Result<Advantages> {
        let t = Instant::now();
        let micro = self.config.micro_batch_size;
        // One actor update per batch: the policy a recompute would run is the one the update's
        // own forward runs, so its detached log-probs are the old ones (ratio exactly 1) and the
        // extra forward pass is skipped, as TRL does when generation and optimizer steps align.
        let mut groups = Groups::new(&batch.group_ids)?.len();
        if let Some(pg) = self.dp() {
            groups = super::dist::sum_u64(pg, groups as u64)? as usize;
        }
        self.on_policy = self.config.recompute_old_log_probs
            && self.config.ppo_epochs == 1
            && self.config.mini_batch_groups.is_none_or(|g| g >= groups);
        if self.config.recompute_old_log_probs && !self.on_policy {
            let policy = &self.policy;
            let lp = by_micro_batch(batch, micro, |mb| Ok(policy.log_probs(mb, false)?.log_probs))?;
            let diff = masked_abs_diff(&lp, &batch.old_log_probs, &batch.response_mask)?;
            metrics.insert("rollout/log_prob_abs_diff", diff);
            batch.old_log_probs = lp;
        }
        if let Some(reference) = &self.reference {
            let lp = by_micro_batch(batch, micro, |mb| Ok(reference.reference_log_probs(mb)?))?;
            batch.ref_log_probs = Some(lp);
        }
        if let Some(c) = &self.critic {
            batch.values = Some(by_micro_batch(batch, micro, |mb| Ok(c.critic.values(mb)?))?);
        }
        let mut rewards = Rewards::from_scores(scores, batch.response_mask.device())?;
        if let (Some(k), Some(ref_lp)) = (&mut self.kl_in_reward, &batch.ref_log_probs) {
            // verl `apply_kl_penalty`: the penalty uses the old (rollout) log-probs.
            let (penalised, m) = rl_loss::kl_in_reward(
                &rewards.token_level(&batch.response_mask)?,
                &batch.old_log_probs,
                ref_lp,
                &batch.response_mask,
                &k.kl,
                &mut k.controller,
            )?;
            metrics.extend_prefixed("reward/kl_penalty/", &m);
            rewards = Rewards::Token(penalised);
        }
        let mut input = AdvantageInput::new(&rewards, &batch.response_mask, &batch.group_ids);
        if let Some(v) = &batch.values {
            input = input.with_values(v);
        }
        if let Some(r) = &batch.ref_log_probs {
            input = input.with_ref_log_probs(r);
        }
        // Data parallel: batch-wide whitening statistics are merged over the ranks.
        let group = std::cell::RefCell::new(super::dist::dp_of(&mut self.dist));
        let merge = |local| match group.borrow_mut().as_deref_mut() {
            Some(pg) => super::dist::merge_moments(pg, local),
            None => Ok(local),
        };
        if group.borrow().is_some() {
            input = input.with_batch_reduce(rl_core::masked::BatchReduce(&merge));
        }
        let adv = self.estimator.estimate(&input)?;
        metrics.insert("time/prepare_s", t.elapsed().as_secs_f64());
        Ok(adv)
    }
}
