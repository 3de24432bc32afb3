//! In-place gradient accumulation for weight matrices, as PyTorch accumulates into
//! `param.grad`: an opt-in hook between a trainer and the backward passes of a [`Policy`].
//!
//! candle's `backward()` returns a fresh [`GradStore`] with a gradient for every weight. With
//! gradient accumulation over micro-batches the running sum and the new micro-batch's gradients
//! are then both alive at the end of each backward pass: two full sets. While a [`GradSink`]
//! holds a weight, the backward passes of ops that honour the hook add that weight's gradient
//! straight into the sink's running sum instead of returning it to candle, so only one set
//! exists; [`GradSink::drain_into`] hands the sums over to a `GradStore` for clipping and the
//! optimizer step.
//!
//! # What a policy does to honour the hook
//!
//! A trainer creates a [`GradSink`] over the policy's [`Var`]s for the micro-batches of one
//! update and drains it before the optimizer step. Honouring it is optional: a policy that does
//! nothing still trains correctly, since every gradient then reaches the `GradStore` (and
//! [`GradSink::drain_into`] adds nothing). A policy that honours it, in each custom op
//! (`candle_core::CustomOp*`) whose backward pass produces a weight's gradient:
//!
//! 1. looks the weight up with [`slot`] **when the forward pass records the op** (the weight
//!    must be the [`Var`]'s own tensor, not a copy) and keeps the returned [`Slot`];
//! 2. in the backward pass, passes the weight's gradient (the weight's shape and dtype) to
//!    [`Slot::add`] and returns what it gives back to candle: `None` when the sink took the
//!    gradient, `Some(grad)` when the sink was dropped in the meantime (so nothing is lost).
//!
//! Gradients of other ops (candle's own, embedding lookups, norms, biases) keep going through
//! the `GradStore`. rl-policy's `linear` and `head_log_prob_entropy` honour the hook, and its
//! decoder layer recorded as one node (training passes on the CPU) sends every weight of the
//! layer there, norms and biases included.
//!
//! ```
//! use candle_core::backprop::GradStore;
//! use candle_core::{DType, Device, Tensor, Var};
//! use rl_core::grad::GradSink;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let w = Var::ones((2, 3), DType::F32, &Device::Cpu)?;
//! let sink = GradSink::new(std::slice::from_ref(&w))?;
//! // What an op that honours the hook does: the slot when recording, `add` in the backward.
//! let slot = rl_core::grad::slot(w.as_tensor()).expect("held");
//! for _ in 0..2 {
//!     let dw = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
//!     assert!(slot.add(dw)?.is_none()); // taken by the sink, not returned to candle
//! }
//! let mut store = GradStore::default();
//! sink.drain_into(&mut store)?;
//! assert_eq!(store.get(w.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![2f32; 3]; 2]);
//! drop(sink);
//! // Without a live sink the gradient goes back to candle.
//! assert!(slot.add(Tensor::ones((2, 3), DType::F32, &Device::Cpu)?)?.is_some());
//! assert!(rl_core::grad::slot(w.as_tensor()).is_none());
//! # Ok(()) }
//! ```
//!
//! [`Policy`]: crate::Policy

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};

/// Failures of a [`GradSink`]: programming errors of the caller or tensor failures at run time,
/// never configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GradSinkError {
    /// [`GradSink::new`] was given a weight that another live sink already holds: its gradients
    /// would be credited to the wrong sum.
    #[error("a weight of shape {shape:?} (var index {index}) is already held by another GradSink")]
    AlreadyHeld {
        /// Index of the weight in the `vars` given to [`GradSink::new`].
        index: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Adding a gradient to a running sum failed (a shape or dtype mismatch).
    #[error("gradient sink: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<GradSinkError> for crate::Error {
    fn from(e: GradSinkError) -> Self {
        match e {
            GradSinkError::Candle(e) => Self::Candle(e),
            e => Self::wrap(e),
        }
    }
}

/// One held weight's running gradient sum, as an op records it ([`slot`]); its sum stops
/// accepting gradients once its sink is dropped.
#[derive(Debug, Default)]
pub struct Slot(Mutex<(bool, Option<Tensor>)>);

/// The slots of every live sink, by weight.
static SLOTS: LazyLock<Mutex<HashMap<TensorId, Arc<Slot>>>> = LazyLock::new(Default::default);

fn slots() -> MutexGuard<'static, HashMap<TensorId, Arc<Slot>>> {
    // A panic while the map was locked cannot leave it inconsistent (single inserts/removes).
    SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, (bool, Option<Tensor>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `grad` (the weight's shape and dtype) into the running sum and returns `None`; when
    /// the sink is gone, returns `Some(grad)` for the caller to hand to candle instead.
    ///
    /// # Errors
    /// A shape or dtype mismatch with the sum so far (a candle error, as a backward pass
    /// reports it).
    pub fn add(&self, grad: Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut slot = self.lock();
        if !slot.0 {
            return Ok(Some(grad));
        }
        slot.1 = Some(match slot.1.take() {
            Some(sum) => (sum + grad)?,
            None => grad,
        });
        Ok(None)
    }
}

/// The slot of `w` when a live [`GradSink`] holds it; `None` otherwise, and always for a tensor
/// that is not a [`Var`]'s own.
pub fn slot(w: &Tensor) -> Option<Arc<Slot>> {
    if !w.is_variable() {
        return None;
    }
    slots().get(&w.id()).cloned()
}

/// Weights whose gradients accumulate in place, as PyTorch accumulates into `param.grad`:
/// while a sink holds a weight, the backward passes of ops that honour the hook (see the
/// [module docs](self)) add its gradient into the sink's running sum instead of returning it to
/// candle's [`GradStore`], so gradient accumulation over micro-batches never holds a second full
/// set of gradients. The ops look a weight up when the forward pass records them; a backward
/// pass run after the sink was dropped returns its gradients to candle as usual. Dropping the
/// sink releases the weights and discards sums not yet drained.
#[derive(Debug)]
pub struct GradSink {
    held: Vec<(Tensor, Arc<Slot>)>,
}

impl GradSink {
    /// Holds `vars` (their running sums start empty; a var listed twice is held once).
    ///
    /// # Errors
    /// [`GradSinkError::AlreadyHeld`] when another live sink already holds one of them.
    pub fn new(vars: &[Var]) -> Result<Self, GradSinkError> {
        let mut map = slots();
        if let Some((index, v)) =
            vars.iter().enumerate().find(|(_, v)| map.contains_key(&v.as_tensor().id()))
        {
            return Err(GradSinkError::AlreadyHeld { index, shape: v.dims().to_vec() });
        }
        let mut held = Vec::with_capacity(vars.len());
        for v in vars {
            let t = v.as_tensor();
            if map.contains_key(&t.id()) {
                continue; // the same var twice in `vars`
            }
            let slot = Arc::new(Slot(Mutex::new((true, None))));
            map.insert(t.id(), slot.clone());
            held.push((t.clone(), slot));
        }
        Ok(Self { held })
    }

    /// Moves every running sum into `store`, added to the entry already there for that weight
    /// (the embedding gradient of a tied output head, say); the sums restart empty.
    ///
    /// # Errors
    /// [`GradSinkError::Candle`]: a shape or dtype mismatch with the entry in `store`.
    pub fn drain_into(&self, store: &mut GradStore) -> Result<(), GradSinkError> {
        for (w, slot) in &self.held {
            let Some(sum) = slot.lock().1.take() else { continue };
            let sum = match store.remove(w) {
                Some(prev) => (prev + sum)?,
                None => sum,
            };
            store.insert(w, sum);
        }
        Ok(())
    }

    /// Discards the running sums (a skipped update).
    pub fn clear(&self) {
        for (_, slot) in &self.held {
            slot.lock().1 = None;
        }
    }
}

impl Drop for GradSink {
    fn drop(&mut self) {
        let mut map = slots();
        for (w, slot) in &self.held {
            *slot.lock() = (false, None);
            if map.get(&w.id()).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                map.remove(&w.id());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn a_weight_is_held_once_and_released_on_drop() {
        let w = Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let a = GradSink::new(&[w.clone(), w.clone()]).unwrap();
        match GradSink::new(std::slice::from_ref(&w)) {
            Err(GradSinkError::AlreadyHeld { index: 0, shape }) => assert_eq!(shape, vec![2, 2]),
            other => panic!("expected AlreadyHeld, got {other:?}"),
        }
        assert!(slot(&w.as_tensor().detach()).is_none(), "a copy is not the var");
        drop(a);
        assert!(slot(w.as_tensor()).is_none());
        let _b = GradSink::new(std::slice::from_ref(&w)).unwrap();
    }

    #[test]
    fn mismatched_gradients_are_candle_errors_not_config_errors() {
        let w = Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let _sink = GradSink::new(std::slice::from_ref(&w)).unwrap();
        let s = slot(w.as_tensor()).unwrap();
        s.add(Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let err = s.add(Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap()).unwrap_err();
        let core: crate::Error = GradSinkError::from(err).into();
        assert!(matches!(core, crate::Error::Candle(_)), "{core:?}");
    }
}
