//! AdamW with saveable state, global gradient-norm clipping and gradient accumulation.
//!
//! The update is torch.optim.AdamW's (decoupled weight decay, bias correction), checked against
//! PyTorch in `tests/fixtures/adamw.json` (`scripts/reference/trainer_adamw.py`). Moments and the
//! update are computed in f32 (f64 for f64 parameters), so bf16 weights keep a full-precision
//! optimizer state.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};

/// AdamW hyper-parameters (torch names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// `β₁`, the first-moment decay.
    pub beta1: f64,
    /// `β₂`, the second-moment decay.
    pub beta2: f64,
    /// `ε` added to `sqrt(v̂)`.
    pub eps: f64,
    /// Decoupled weight decay `λ` (the parameter is multiplied by `1 − lr·λ` before the step).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// verl's actor optimizer: betas (0.9, 0.999), eps 1e-8, weight decay 0.01 (verl YAML L8-80).
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// OpenRLHF / Open-Reasoner-Zero / oat: betas (0.9, 0.95), eps 1e-8, no weight decay
    /// (OpenRLHF `--adam_betas 0.9 0.95`, `--l2 0`).
    pub fn openrlhf() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 }
    }

    /// Checks the ranges (`β ∈ [0, 1)`, `ε > 0`, `λ ≥ 0`); `prefix` is the config path.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(TrainerError::config(format!("{prefix}.{name}"), "must be in [0, 1)"));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(TrainerError::config(format!("{prefix}.eps"), "must be finite and > 0"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(TrainerError::config(format!("{prefix}.weight_decay"), "must be >= 0"));
        }
        Ok(())
    }
}

/// First and second moments of one parameter: f32 (f64 for f64 vars) tensors of its shape.
#[derive(Debug)]
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// AdamW over a fixed list of [`Var`]s, with its state exposed for checkpoints.
///
/// ```
/// use candle_core::{Device, Var};
/// use rl_trainer::optim::{AdamW, AdamWConfig};
///
/// let w = Var::new(&[1f32, -2.0], &Device::Cpu)?;
/// let mut opt = AdamW::new(vec![w.clone()], AdamWConfig::default())?;
/// let grads = w.as_tensor().sqr()?.sum_all()?.backward()?; // d/dw Σ w² = 2w
/// opt.step(&grads, 0.1)?;
/// // Decay by 1 − lr·λ = 0.999, then the first Adam step moves every coordinate by lr against
/// // the sign of its gradient.
/// let w1 = w.as_tensor().to_vec1::<f32>()?;
/// assert!((w1[0] - 0.899).abs() < 1e-5 && (w1[1] + 1.898).abs() < 1e-5);
/// # Ok::<(), rl_trainer::TrainerError>(())
/// ```
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<Var>,
    moments: Vec<Option<Moments>>,
    config: AdamWConfig,
    steps: u64,
    fused: bool,
}

impl AdamW {
    /// An optimizer for `vars` (non-float vars are rejected). Moments are allocated lazily, on
    /// the first gradient each var receives.
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        config.validate("optimizer")?;
        if let Some(i) = vars.iter().position(|v| !v.dtype().is_float()) {
            return Err(TrainerError::config("optimizer.vars", format!("var {i} is not a float")));
        }
        let moments = vars.iter().map(|_| None).collect();
        Ok(Self { vars, moments, config, steps: 0, fused: true })
    }

    /// Enables (default) or disables the fused in-place update used for contiguous f32/f64 CPU
    /// parameters (three passes over memory, no temporaries). Other devices and dtypes always
    /// use the tensor-op path; both compute the same update.
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// The optimized parameters, in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Number of steps taken (the `t` of the bias correction).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One AdamW step at learning rate `lr` with the gradients in `grads` (vars without a
    /// gradient keep their value and their moments, as torch skips params whose `.grad` is None).
    ///
    /// Per parameter `θ` with gradient `g`, at step `t` (torch.optim.AdamW):
    /// `θ ← θ·(1 − lr·λ)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `θ ← θ − lr·(m/(1−β₁ᵗ)) / (sqrt(v/(1−β₂ᵗ)) + ε)`.
    ///
    /// Contiguous f32/f64 CPU parameters are updated in place (see [`AdamW::with_fused`]).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.update(lr, |var| grads.get(var.as_tensor()).cloned())
    }

    /// [`AdamW::step`] that removes each parameter's gradient from `grads` as soon as it has
    /// been applied, so its memory is free again before the next parameter's update (on the
    /// first step, where the moments are allocated, this keeps the optimizer's peak at the
    /// parameters plus twice their size instead of three times). Gradients of other tensors stay
    /// in `grads`. Same values as [`AdamW::step`].
    pub fn step_releasing(&mut self, grads: &mut GradStore, lr: f64) -> Result<()> {
        self.update(lr, |var| grads.remove(var.as_tensor()))
    }

    /// One step with the gradient `grad(var)` of each var (`None`: skipped).
    fn update(&mut self, lr: f64, mut grad: impl FnMut(&Var) -> Option<Tensor>) -> Result<()> {
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(TrainerError::config("lr", format!("must be finite and >= 0, got {lr}")));
        }
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (var, moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grad(var) else { continue };
            let dtype = state_dtype(var);
            let g = g.to_dtype(dtype)?;
            let state = match moments.take() {
                Some(s) => s,
                None => Moments { m: g.zeros_like()?, v: g.zeros_like()? },
            };
            let theta = var.as_tensor();
            if self.fused && fused::applies(theta, &g) {
                let g = g.contiguous()?;
                state.m.inplace_op2(&g, &fused::Ema { beta: beta1, square: false })?;
                state.v.inplace_op2(&g, &fused::Ema { beta: beta2, square: true })?;
                let apply = fused::Apply { lr, weight_decay, eps, bc1, bc2 };
                theta.inplace_op3(&state.m, &state.v, &apply)?;
                *moments = Some(state);
                continue;
            }
            let m = (state.m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
            let v = (state.v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
            let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, eps)?;
            let update = m.div(&denom)?.affine(lr / bc1, 0.0)?;
            let theta = var.as_tensor().to_dtype(dtype)?;
            let theta = (theta.affine(1.0 - lr * weight_decay, 0.0)? - update)?;
            var.set(&theta.to_dtype(var.dtype())?)?;
            *moments = Some(Moments { m, v });
        }
        Ok(())
    }

    /// A copy of the optimizer state as named tensors (`"m.{i}"`, `"v.{i}"` for var `i` that has
    /// state) plus the step count, for [`crate::checkpoint`].
    pub fn state(&self) -> Result<(u64, HashMap<String, Tensor>)> {
        // Deep copies: the fused path updates the moments in place.
        let (steps, shared) = self.state_shared();
        let copies = shared.into_iter().map(|(k, t)| Ok((k, t.copy()?)));
        Ok((steps, copies.collect::<Result<_>>()?))
    }

    /// [`AdamW::state`] without the copies: the tensors share the live moments' storage, so they
    /// must be used (saved) before the next [`AdamW::step`]. Checkpoints write these, holding
    /// no second copy of both moments (twice the parameters' size) while they do.
    pub(crate) fn state_shared(&self) -> (u64, HashMap<String, Tensor>) {
        let mut out = HashMap::new();
        for (i, s) in self.moments.iter().enumerate() {
            if let Some(s) = s {
                out.insert(format!("m.{i}"), s.m.clone());
                out.insert(format!("v.{i}"), s.v.clone());
            }
        }
        (self.steps, out)
    }

    /// Restores a state produced by [`AdamW::state`] (moments are copied to each var's device).
    ///
    /// # Errors
    /// [`TrainerError::Checkpoint`] (with an empty path) when a moment's shape does not match its
    /// var or names a var that does not exist.
    pub fn load_state(&mut self, steps: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut moments: Vec<Option<Moments>> = self.vars.iter().map(|_| None).collect();
        for (i, var) in self.vars.iter().enumerate() {
            let (m, v) = (tensors.get(&format!("m.{i}")), tensors.get(&format!("v.{i}")));
            match (m, v) {
                (Some(m), Some(v)) => {
                    for x in [m, v] {
                        if x.dims() != var.dims() {
                            return Err(TrainerError::checkpoint(
                                "",
                                format!(
                                    "optimizer moment {i}: shape {:?} vs var {:?}",
                                    x.dims(),
                                    var.dims()
                                ),
                            ));
                        }
                    }
                    let dev = var.device();
                    let dtype = state_dtype(var);
                    moments[i] = Some(Moments {
                        m: m.to_device(dev)?.to_dtype(dtype)?.copy()?,
                        v: v.to_device(dev)?.to_dtype(dtype)?.copy()?,
                    });
                }
                (None, None) => {}
                _ => {
                    return Err(TrainerError::checkpoint(
                        "",
                        format!("optimizer moment {i}: m or v missing"),
                    ));
                }
            }
        }
        let known = moments.iter().filter(|m| m.is_some()).count() * 2;
        if known != tensors.len() {
            return Err(TrainerError::checkpoint(
                "",
                format!(
                    "optimizer state has {} tensors, {known} match the {} vars",
                    tensors.len(),
                    self.vars.len()
                ),
            ));
        }
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }
}

/// The dtype of a var's optimizer state: f64 for f64 vars, f32 otherwise.
fn state_dtype(var: &Var) -> DType {
    if var.dtype() == DType::F64 { DType::F64 } else { DType::F32 }
}

/// The result of [`clip_grad_norm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipReport {
    /// Global L2 norm of all gradients **before** clipping (NaN/inf when a gradient is).
    pub norm: f64,
    /// `true` when the norm is finite (the gradients may be used); `false` means skip the step.
    pub finite: bool,
    /// `true` when the gradients were scaled down.
    pub clipped: bool,
}

/// Scales the gradients of `vars` in `grads` so that their global L2 norm is at most `max_norm`
/// (torch `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, applied when < 1) and
/// returns the pre-clip norm. A non-finite norm leaves the gradients untouched and reports
/// `finite: false`. `max_norm = None` only measures.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[Var],
    max_norm: Option<f64>,
) -> Result<ClipReport> {
    let mut sq = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    let finite = norm.is_finite();
    let mut clipped = false;
    if let (true, Some(max)) = (finite, max_norm) {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            clipped = true;
            for var in vars {
                if let Some(g) = grads.remove(var.as_tensor()) {
                    grads.insert(var.as_tensor(), g.affine(coef, 0.0)?);
                }
            }
        }
    }
    Ok(ClipReport { norm, finite, clipped })
}

/// Gradient accumulation: adds the gradients of `vars` from `step` (the result of one
/// micro-batch's `backward()`) into `acc`, detached. Only the vars' entries are kept, so the
/// intermediate gradients of the micro-batch graph are freed with `step`.
pub fn accumulate(acc: &mut GradStore, step: GradStore, vars: &[Var]) -> Result<()> {
    for var in vars {
        if let Some(g) = step.get(var.as_tensor()) {
            let g = g.detach();
            let sum = match acc.remove(var.as_tensor()) {
                Some(prev) => prev.add(&g)?,
                None => g,
            };
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(())
}

/// The in-place CPU kernels of [`AdamW::step`].
mod fused {
    use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, bail};

    /// `true` when the fused path can update `theta` with gradient `g`: both on the CPU, same
    /// f32/f64 dtype, `theta` contiguous.
    pub(super) fn applies(theta: &Tensor, g: &Tensor) -> bool {
        theta.device().is_cpu()
            && matches!(theta.dtype(), DType::F32 | DType::F64)
            && g.dtype() == theta.dtype()
            && theta.is_contiguous()
            && g.dims() == theta.dims()
    }

    fn range(l: &Layout, name: &str) -> candle_core::Result<(usize, usize)> {
        match l.contiguous_offsets() {
            Some(r) => Ok(r),
            None => bail!("adamw: `{name}` must be contiguous"),
        }
    }

    /// `x ← β·x + (1−β)·g` (or `g²` when `square`).
    pub(super) struct Ema {
        pub beta: f64,
        pub square: bool,
    }

    impl InplaceOp2 for Ema {
        fn name(&self) -> &'static str {
            "adamw-ema"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<()> {
            let ((a, b), (c, d)) = (range(l1, "moment")?, range(l2, "grad")?);
            macro_rules! ema {
                ($x:expr, $g:expr, $t:ty) => {{
                    let (beta, one) = (self.beta as $t, (1.0 - self.beta) as $t);
                    for (x, &g) in $x[a..b].iter_mut().zip(&$g[c..d]) {
                        let g = if self.square { g * g } else { g };
                        *x = beta * *x + one * g;
                    }
                }};
            }
            match (s1, s2) {
                (CpuStorage::F32(x), CpuStorage::F32(g)) => ema!(x, g, f32),
                (CpuStorage::F64(x), CpuStorage::F64(g)) => ema!(x, g, f64),
                _ => bail!("adamw-ema: f32/f64 moments and gradients of one dtype"),
            }
            Ok(())
        }
    }

    /// `θ ← θ·(1 − lr·λ) − (lr/bc1)·m / (sqrt(v/bc2) + ε)`.
    pub(super) struct Apply {
        pub lr: f64,
        pub weight_decay: f64,
        pub eps: f64,
        pub bc1: f64,
        pub bc2: f64,
    }

    impl InplaceOp3 for Apply {
        fn name(&self) -> &'static str {
            "adamw-apply"
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> candle_core::Result<()> {
            let ((a, b), (c, d), (e, f)) = (range(l1, "param")?, range(l2, "m")?, range(l3, "v")?);
            macro_rules! apply {
                ($p:expr, $m:expr, $v:expr, $t:ty) => {{
                    let decay = (1.0 - self.lr * self.weight_decay) as $t;
                    let (step, inv_bc2, eps) =
                        ((self.lr / self.bc1) as $t, (1.0 / self.bc2) as $t, self.eps as $t);
                    for ((p, &m), &v) in $p[a..b].iter_mut().zip(&$m[c..d]).zip(&$v[e..f]) {
                        *p = *p * decay - step * m / ((v * inv_bc2).sqrt() + eps);
                    }
                }};
            }
            match (s1, s2, s3) {
                (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                    apply!(p, m, v, f32)
                }
                (CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                    apply!(p, m, v, f64)
                }
                _ => bail!("adamw-apply: f32/f64 parameters and moments of one dtype"),
            }
            Ok(())
        }
    }
}
