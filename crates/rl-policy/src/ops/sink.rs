//! In-place gradient accumulation for weight matrices, as PyTorch accumulates into
//! `param.grad`.
//!
//! candle's `backward()` returns a fresh [`GradStore`] with a gradient for every weight. With
//! gradient accumulation over micro-batches the running sum and the new micro-batch's gradients
//! are then both alive at the end of each backward pass: two full sets (2 × 540 MB for
//! SmolLM2-135M in f32). While a [`GradSink`] holds a weight, the backward passes of
//! [`linear`](super::linear) and [`head_log_prob_entropy`](super::head_log_prob_entropy) add
//! that weight's gradient straight into the sink's running sum instead of returning it to
//! candle, so only one set exists; [`GradSink::drain_into`] hands the sums over to a `GradStore`
//! for clipping and the optimizer step. Gradients of other ops (embedding lookups, norms,
//! biases) still go through the `GradStore`.
//!
//! The ops look a weight up when the forward pass records them: a sink affects the graphs built
//! while it exists. A backward pass that runs after the sink was dropped returns its gradients to
//! candle as usual, so none are lost.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};

use crate::{PolicyError, Result};

/// One held weight's running gradient sum; `live` is `false` once its sink is dropped.
#[derive(Debug, Default)]
pub(crate) struct Slot(Mutex<(bool, Option<Tensor>)>);

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

    /// Adds `grad` (same shape as the weight) into the running sum. Returns `Some(grad)` when
    /// the sink is gone, for the caller to hand to candle instead.
    pub(crate) fn add(&self, grad: Tensor) -> candle_core::Result<Option<Tensor>> {
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

/// The slot of `w` when a live [`GradSink`] holds it (`w` must be a [`Var`]'s tensor).
pub(crate) fn slot(w: &Tensor) -> Option<Arc<Slot>> {
    if !w.is_variable() {
        return None;
    }
    slots().get(&w.id()).cloned()
}

/// Weights whose matrix-product gradients accumulate in place, as PyTorch accumulates into
/// `param.grad`: while a sink holds a weight, the backward passes of
/// [`linear`](super::linear) and [`head_log_prob_entropy`](super::head_log_prob_entropy) add its
/// gradient into the sink's running sum instead of returning it to candle's [`GradStore`], so
/// gradient accumulation over micro-batches never holds a second full set of gradients.
/// Gradients of other ops (embedding lookups, norms, biases) still go through the `GradStore`.
/// The ops look a weight up when the forward pass records them; a backward pass run after the
/// sink was dropped returns its gradients to candle as usual. Dropping the sink releases the
/// weights and discards sums not yet drained.
///
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use candle_core::backprop::GradStore;
/// use rl_policy::ops::{GradSink, linear};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let w = Var::ones((2, 3), DType::F32, &Device::Cpu)?;
/// let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
/// let sink = GradSink::new(std::slice::from_ref(&w))?;
/// for _ in 0..2 {
///     // Two micro-batches: the weight's gradient never enters their GradStores.
///     let grads = linear(&x, w.as_tensor(), None)?.sum_all()?.backward()?;
///     assert!(grads.get(w.as_tensor()).is_none());
/// }
/// let mut total = GradStore::default();
/// sink.drain_into(&mut total)?;
/// // d/dw Σ x·wᵀ = 4 rows of ones, twice.
/// assert_eq!(total.get(w.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![8f32; 3]; 2]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GradSink {
    held: Vec<(Tensor, Arc<Slot>)>,
}

impl GradSink {
    /// Holds `vars` (their running sums start empty).
    ///
    /// # Errors
    /// [`PolicyError::Input`] when another live sink already holds one of them: its
    /// gradients would be credited to the wrong sum.
    pub fn new(vars: &[Var]) -> Result<Self> {
        let mut map = slots();
        if let Some(v) = vars.iter().find(|v| map.contains_key(&v.as_tensor().id())) {
            return Err(PolicyError::input(
                "vars",
                format!("a weight of shape {:?} is already held by another GradSink", v.dims()),
            ));
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
    /// A shape or dtype mismatch with the entry in `store`.
    pub fn drain_into(&self, store: &mut GradStore) -> Result<()> {
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
    use crate::ops::{head_log_prob_entropy, linear};
    use candle_core::Device;

    fn values(shape: (usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1;
        let v: Vec<f64> = (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 7919 + 13)) % 997) as f64 / 997.0 - 0.5)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Σ over micro-batches of a loss through `linear` and the output head: the gradients a sink
    /// collects equal the summed `GradStore` gradients without one, bit for bit in f64; other
    /// weights' and the inputs' gradients are unaffected; after the sink is dropped, gradients
    /// flow to candle again.
    #[test]
    fn sunk_gradients_equal_accumulated_store_gradients() {
        let w = Var::from_tensor(&values((5, 4), 1)).unwrap();
        let head = Var::from_tensor(&values((7, 5), 2)).unwrap();
        let other = Var::from_tensor(&values((4, 4), 3)).unwrap();
        let targets = Tensor::new(&[1u32, 6, 0], &Device::Cpu).unwrap();
        let loss = |x: &Tensor| {
            let h =
                linear(&linear(x, other.as_tensor(), None).unwrap(), w.as_tensor(), None).unwrap();
            let (lp, ent) = head_log_prob_entropy(&h, head.as_tensor(), &targets, 2).unwrap();
            (lp.sum_all().unwrap() + ent.sum_all().unwrap()).unwrap()
        };
        let xs = [values((3, 4), 4), values((3, 4), 5)];
        // Reference: plain GradStores, summed.
        let mut want = GradStore::default();
        for x in &xs {
            let g = loss(x).backward().unwrap();
            for v in [&w, &head, &other] {
                let g = g.get(v.as_tensor()).unwrap().clone();
                let sum = match want.remove(v.as_tensor()) {
                    Some(p) => (p + g).unwrap(),
                    None => g,
                };
                want.insert(v.as_tensor(), sum);
            }
        }
        let sink = GradSink::new(&[w.clone(), head.clone()]).unwrap();
        assert!(GradSink::new(std::slice::from_ref(&w)).is_err(), "a weight held twice");
        let mut got = GradStore::default();
        for x in &xs {
            let g = loss(x).backward().unwrap();
            assert!(g.get(w.as_tensor()).is_none() && g.get(head.as_tensor()).is_none());
            let o = g.get(other.as_tensor()).unwrap().clone();
            let sum = match got.remove(other.as_tensor()) {
                Some(p) => (p + o).unwrap(),
                None => o,
            };
            got.insert(other.as_tensor(), sum);
        }
        sink.drain_into(&mut got).unwrap();
        for v in [&w, &head, &other] {
            let (a, b) = (got.get(v.as_tensor()).unwrap(), want.get(v.as_tensor()).unwrap());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert_eq!(d, 0.0, "{:?}", v.dims());
        }
        // Drained: the sums restart empty. A graph recorded with the sink but run after it was
        // dropped hands its gradients to candle.
        let pending = loss(&xs[0]);
        drop(sink);
        let g = pending.backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some() && g.get(head.as_tensor()).is_some());
        let again = GradSink::new(std::slice::from_ref(&w)).unwrap();
        let mut none = GradStore::default();
        again.drain_into(&mut none).unwrap();
        assert!(none.get(w.as_tensor()).is_none());
    }
}
