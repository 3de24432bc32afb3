//! Phase 1, **rollout**: generate responses (with the policy itself, or with the trainer's
//! [`Sampler`](rl_core::Sampler), e.g. an inference engine), score them, and (DAPO) keep only the
//! groups whose rewards differ, generating again until the batch is full.

use std::time::Instant;

use rl_core::rng::mix_seed;
use rl_core::{Critic, Groups, Metrics, Policy, RolloutBatch, SamplingConfig};

use super::{SEED_GENERATE, Trainer};
use crate::config::Shortfall;
use crate::data::PromptSource;
use crate::metrics::rollout_metrics;
use crate::{Result, TrainerError};

impl<P: Policy, C: Critic> Trainer<P, C> {
    /// Generation + scoring (+ dynamic sampling) of `groups` prompts from `source`: the batch and
    /// one score per response. Group ids are made unique across rounds. `None` when dynamic
    /// sampling with `on_shortfall = "train"` kept no group: the step has nothing to train on.
    pub(super) fn rollout(
        &mut self,
        source: &mut dyn PromptSource,
        groups: usize,
        metrics: &mut Metrics,
    ) -> Result<Option<(RolloutBatch, Vec<f32>)>> {
        let dynamic = self.config.dynamic_sampling.clone();
        let rounds = dynamic.as_ref().map_or(1, |d| d.max_rounds);
        // Prompts drawn per round: the step's groups, or more with `prompts_per_round`.
        let draw = dynamic.as_ref().and_then(|d| d.prompts_per_round).unwrap_or(0).max(groups);
        let (mut kept, mut kept_scores, mut kept_groups) = (Vec::new(), Vec::new(), 0usize);
        let (mut all_samples, mut all_scores) = (Vec::new(), Vec::new());
        let (mut gen_s, mut score_s, mut next_id, mut used_rounds) = (0.0, 0.0, 0usize, 0usize);
        // Data parallel: every rank draws the same global prompts and keeps its share of whole
        // groups, whose group ids stay the global ones (dynamic sampling is refused under DP).
        let (rank, world) = (self.rank(), self.world_size());
        let mine = super::dist::share(groups, rank, world);
        if world > 1 && mine.is_empty() {
            return Err(TrainerError::config(
                "trainer.dist",
                format!("{groups} prompt groups per step cannot be shared by {world} ranks"),
            ));
        }
        for round in 0..rounds {
            used_rounds = round + 1;
            let mut prompts = source.next_prompts(draw)?;
            let mut seed =
                mix_seed(self.config.seed, &[SEED_GENERATE, self.state.step, round as u64]);
            if world > 1 {
                prompts = prompts.get(mine.clone()).map(<[_]>::to_vec).unwrap_or_default();
                next_id = mine.start;
                seed = mix_seed(seed, &[mine.start as u64]);
            }
            let cfg = SamplingConfig { seed, ..self.config.sampling.clone() };
            let t = Instant::now();
            let mut batch = match &mut self.sampler {
                Some(sampler) => sampler.sample(&prompts, &cfg)?,
                None => self.policy.generate(&prompts, &cfg)?,
            };
            gen_s += t.elapsed().as_secs_f64();
            batch.validate()?;
            let offset = next_id;
            for (id, s) in batch.group_ids.iter_mut().zip(batch.samples.iter_mut()) {
                *id += offset;
                s.group_id = *id;
                next_id = next_id.max(*id + 1);
            }
            let t = Instant::now();
            let scores = crate::eval::score(self.reward.as_ref(), &batch)?;
            score_s += t.elapsed().as_secs_f64();
            all_samples.extend(batch.samples.iter().cloned());
            all_scores.extend(scores.iter().copied());
            if dynamic.is_none() {
                kept_groups = Groups::new(&batch.group_ids)?.len();
                kept.push(batch);
                kept_scores = scores;
                break;
            }
            let g = Groups::new(&batch.group_ids)?;
            let mut rows = Vec::new();
            for members in g.iter() {
                if kept_groups == groups {
                    break;
                }
                let first = scores[members[0]];
                if members.len() == 1 || members.iter().any(|&r| scores[r] != first) {
                    rows.extend_from_slice(members);
                    kept_groups += 1;
                }
            }
            if !rows.is_empty() {
                kept_scores.extend(rows.iter().map(|&r| scores[r]));
                kept.push(batch.select(&rows)?);
            }
            if kept_groups == groups {
                break;
            }
        }
        if let Some(pg) = self.dp() {
            (all_samples, all_scores) = super::dist::gather_rollout(pg, &all_samples, &all_scores)?;
        }
        metrics.extend_prefixed(
            "",
            &rollout_metrics(&all_samples, &all_scores, self.config.accuracy_threshold),
        );
        let gen_tokens: usize = all_samples.iter().map(|s| s.response_tokens).sum();
        metrics.insert("time/generate_s", gen_s);
        metrics.insert("time/score_s", score_s);
        metrics.insert("perf/generate_tokens_per_s", gen_tokens as f64 / gen_s.max(1e-9));
        if let Some(d) = &dynamic {
            metrics.insert("dynamic/rounds", used_rounds as f64);
            metrics.insert("dynamic/kept_groups", kept_groups as f64);
            if kept_groups < groups {
                let err = TrainerError::DynamicSamplingShortfall {
                    kept: kept_groups,
                    needed: groups,
                    rounds,
                };
                if d.on_shortfall == Shortfall::Error {
                    return Err(err);
                }
                if kept_groups == 0 {
                    tracing::warn!("{err}; the step skips its update");
                    return Ok(None);
                }
                tracing::warn!("{err}; training on the groups kept");
            }
        }
        Ok(Some((RolloutBatch::concat(&kept)?, kept_scores)))
    }
}
