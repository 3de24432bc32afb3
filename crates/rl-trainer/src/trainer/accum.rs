//! Phase 4, **accumulate and step**: the gradients of a mini-batch's micro-batches are summed
//! (matrix weights in place through the [`GradSink`]), clipped and applied in one optimizer step;
//! the micro-batches' metrics combine by their [`Reduce`](rl_core::metrics::Reduce).

use candle_core::Var;
use candle_core::backprop::GradStore;
use rl_core::dist::ProcessGroup;
use rl_core::grad::GradSink;
use rl_core::{LossOutput, Metrics};

use super::scalar;
use crate::optim::{AdamW, accumulate, clip_grad_norm};
use crate::{OptimizerConfig, Result};

/// Gradient accumulation of one optimizer over the micro-batches of a mini-batch.
pub(super) struct Accum {
    pub(super) enabled: bool,
    grads: GradStore,
    /// Running sums of the matrix weights' gradients, accumulated in place by the backward
    /// passes (so a micro-batch's backward never holds a second full set of them); drained into
    /// `grads` before clipping.
    sink: Option<GradSink>,
    loss: f64,
    /// Each micro-batch's metrics with its number of valid tokens.
    metrics: Vec<(Metrics, f64)>,
    pub(super) failure: Option<&'static str>,
}

impl Accum {
    /// `sink`: the vars whose gradients accumulate in place (`None`: all through `grads`).
    pub(super) fn new(enabled: bool, sink: Option<&[Var]>) -> Result<Self> {
        let sink = match sink {
            Some(vars) if enabled => Some(GradSink::new(vars).map_err(rl_core::Error::from)?),
            _ => None,
        };
        Ok(Self {
            enabled,
            grads: GradStore::default(),
            sink,
            loss: 0.0,
            metrics: Vec::new(),
            failure: None,
        })
    }

    pub(super) fn active(&self) -> bool {
        self.enabled && self.failure.is_none()
    }

    /// Adds one micro-batch: a non-finite loss marks the whole mini-batch update as failed.
    pub(super) fn add(
        &mut self,
        out: LossOutput,
        tokens: f64,
        vars: &[Var],
        what: &'static str,
    ) -> Result<()> {
        let value = scalar(&out.loss)?;
        if !value.is_finite() {
            self.failure = Some(what);
            return Ok(());
        }
        self.loss += value;
        self.metrics.push((out.metrics, tokens));
        accumulate(&mut self.grads, out.loss.backward()?, vars)
    }
}

/// What one optimizer update reports.
pub(super) struct Update {
    loss: f64,
    grad_norm: f64,
    lr: f64,
    metrics: Metrics,
}

/// Clips and steps; `None` when the update must be skipped (non-finite loss or norm). Under
/// data parallelism (`dp`), the skip is decided together, the gradients, the loss and the
/// metrics are summed / merged over the ranks first.
pub(super) fn apply(
    acc: &mut Accum,
    optim: &mut AdamW,
    cfg: &OptimizerConfig,
    updates: u64,
    mut dp: Option<&mut dyn ProcessGroup>,
) -> Result<Option<Update>> {
    let mut failed = acc.failure.is_some();
    if let Some(pg) = dp.as_deref_mut() {
        failed = rl_core::dist::any_rank(pg, failed)?;
    }
    if failed {
        return Ok(None);
    }
    if let Some(sink) = &acc.sink {
        sink.drain_into(&mut acc.grads).map_err(rl_core::Error::from)?;
    }
    let vars = optim.vars().to_vec();
    if let Some(pg) = dp {
        rl_core::dist::all_reduce_grads(pg, &mut acc.grads, &vars, 0)?;
        acc.loss = super::dist::sum_f64(pg, acc.loss)?;
        acc.metrics = super::dist::gather_parts(pg, &acc.metrics)?;
    }
    let report = clip_grad_norm(&mut acc.grads, &vars, cfg.max_grad_norm)?;
    if !report.finite {
        return Ok(None);
    }
    let lr = cfg.schedule.lr(cfg.lr, updates as usize);
    optim.step_releasing(&mut acc.grads, lr)?;
    Ok(Some(Update {
        loss: acc.loss,
        grad_norm: report.norm,
        lr,
        metrics: Metrics::merge_parts(&acc.metrics),
    }))
}

/// The updates of one step and where its time went.
#[derive(Default)]
pub(super) struct UpdateStats {
    pub(super) actor: Vec<Update>,
    pub(super) critic: Vec<Update>,
    pub(super) train_tokens: usize,
    /// Rows left out of the forward/backward passes (all-zero advantages), over the epochs.
    pub(super) skipped_rows: usize,
    pub(super) train_s: f64,
    pub(super) optimizer_s: f64,
}

impl UpdateStats {
    /// Writes `actor/*`, `critic/*`, `time/*` and `perf/*` metrics (means over the updates).
    pub(super) fn write(&self, m: &mut Metrics, actor_frozen: bool, has_critic: bool) {
        let mut part = |prefix: &str, ups: &[Update]| {
            let n = ups.len().max(1) as f64;
            let inner = Metrics::mean(&ups.iter().map(|u| u.metrics.clone()).collect::<Vec<_>>());
            m.extend_prefixed(prefix, &inner);
            if let Some(last) = ups.last() {
                m.insert(format!("{prefix}lr"), last.lr);
            }
            m.insert(format!("{prefix}loss"), ups.iter().map(|u| u.loss).sum::<f64>() / n);
            m.insert(
                format!("{prefix}grad_norm"),
                ups.iter().map(|u| u.grad_norm).sum::<f64>() / n,
            );
            m.insert(format!("{prefix}updates"), ups.len() as f64);
        };
        if !actor_frozen {
            part("actor/", &self.actor);
        }
        if has_critic {
            part("critic/", &self.critic);
        }
        m.insert("time/train_s", self.train_s);
        m.insert("time/optimizer_s", self.optimizer_s);
        m.insert("perf/train_tokens_per_s", self.train_tokens as f64 / self.train_s.max(1e-9));
    }
}
