//! Mixed precision: bf16 matrix products with f32 accumulation over f32 master weights, as
//! PyTorch's `torch.autocast(dtype=torch.bfloat16)` defines it.
//!
//! While an [`autocast`] scope is open on a thread, every matrix product that [`crate::ops`]
//! records there for f32 tensors ([`linear`](super::linear), [`linear_add`](super::linear_add),
//! [`swiglu_linear`](super::swiglu_linear), [`matmul`](super::matmul),
//! [`attention_probs`](super::attention_probs),
//! [`head_log_prob_entropy`](super::head_log_prob_entropy)) rounds its operands to bf16 and
//! accumulates in f32, forward and backward; results and gradients stay f32, so norms, softmax,
//! log-softmax + gather, entropy, losses and the optimizer run in f32 and the weights' gradients
//! reach the f32 masters. Each op captures the setting when it is recorded, so its backward pass
//! follows it wherever it runs.
//!
//! The bf16 copies of the weights live in a [`Bf16Weights`] cache: made on first use, kept while
//! the cache lives (a [`crate::Transformer`] holds one, so the decode steps of one sampling call
//! and the products of one forward + backward pass convert each weight once), and never
//! refreshed: a cache must not outlive an optimizer step (a new `Transformer` per step does it).
//! The decoders of one [`crate::LanguageModel`] write their copies into the same
//! [`Bf16Buffers`], so a new cache reuses the previous one's memory.
//!
//! On the CPU the products run in MKL's `cblas_gemm_bf16bf16f32` on CPUs with AMX tiles when MKL
//! is loaded, else in rl-zero's AVX-512 BF16 kernels on CPUs with that instruction, else in MKL
//! without AMX, else the bf16-rounded operands are multiplied in f32
//! ([`super::blas::bf16_path`]). Elsewhere (CUDA) the operands are cast to bf16 per product and
//! multiplied by candle (cuBLAS with f32 accumulation), the result cast back to f32.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor, TensorId};
use serde::{Deserialize, Serialize};

/// The dtype of the matrix products (the precision policy's `compute_dtype`); the weights
/// (`param_dtype`) and the AdamW moments stay in the model's dtype, f32. Serialised as `"f32"` /
/// `"bf16"` (`[policy] compute_dtype = "bf16"`).
///
/// ```
/// use rl_policy::ComputeDtype;
///
/// let c: ComputeDtype = serde_json::from_str("\"bf16\"")?;
/// assert_eq!(c, ComputeDtype::Bf16);
/// assert_eq!(ComputeDtype::default(), ComputeDtype::F32);
/// assert!(serde_json::from_str::<ComputeDtype>("\"fp8\"").is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    /// Every product in the weights' dtype (f32).
    #[default]
    F32,
    /// Matrix products with bf16 operands and f32 accumulation; everything else f32.
    Bf16,
}

/// The serde spelling (`"f32"`, `"bf16"`) from a command line or an environment variable.
///
/// ```
/// use rl_policy::ComputeDtype;
///
/// assert_eq!("bf16".parse::<ComputeDtype>()?, ComputeDtype::Bf16);
/// assert!("fp8".parse::<ComputeDtype>().unwrap_err().to_string().contains("\"f32\" or \"bf16\""));
/// # Ok::<(), rl_policy::PolicyError>(())
/// ```
impl std::str::FromStr for ComputeDtype {
    type Err = crate::PolicyError;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(crate::PolicyError::config(
                "compute_dtype",
                format!("{other:?}: expected \"f32\" or \"bf16\""),
            )),
        }
    }
}

/// The bf16 buffers of one model's weights, kept across [`Bf16Weights`] caches: a cache made
/// with [`Bf16Weights::with_buffers`] converts each weight into the buffer the previous cache
/// used instead of allocating a new copy. A [`crate::LanguageModel`] holds one and gives it to
/// every decoder it builds, so the per-update conversion allocates nothing and faults in no new
/// pages, and the buffers can sit on huge pages ([`crate::runtime::huge_pages_for`], once, when
/// a buffer is made). The price: a decoder built before an update reads the new weights through
/// these buffers once a newer decoder has converted them (as an f32 decoder always reads the
/// current weights).
#[derive(Debug, Default)]
pub struct Bf16Buffers {
    /// Keyed by where the f32 values live (data address, start offset): decoders see the same
    /// weights through different tensors (detached views have ids of their own), and an
    /// optimizer update writes into the same storage.
    buffers: Mutex<HashMap<(usize, usize), Tensor>>,
}

impl Bf16Buffers {
    /// No buffers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `w` (CPU f32) rounded into its buffer (made, and moved onto huge pages, on first use);
    /// any other tensor converted afresh.
    fn convert(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        let w = w.detach();
        let key = {
            let (s, l) = w.storage_and_layout();
            match &*s {
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) if w.is_contiguous() => {
                    Some((v.as_ptr() as usize, l.start_offset()))
                }
                _ => None,
            }
        };
        let Some(key) = key else {
            return super::blas::to_bf16(&w);
        };
        let lock = || self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        // The map's lock is not held while converting: the in-place write waits for readers of
        // the buffer (another decoder's products), which may themselves need the map.
        let existing = lock().get(&key).filter(|b| b.dims() == w.dims()).cloned();
        if let Some(b) = existing {
            b.inplace_op2(&w, &super::blas::IntoBf16)?;
            return Ok(b);
        }
        let b = super::blas::to_bf16(&w)?;
        crate::runtime::huge_pages_for(&b);
        lock().insert(key, b.clone());
        Ok(b)
    }
}

/// bf16 copies of f32 weights, keyed by the weight tensor, made on first use; with conversion
/// statistics (to quantify the cost per step).
#[derive(Debug, Default)]
pub struct Bf16Weights {
    copies: Mutex<HashMap<TensorId, Tensor>>,
    /// Where the copies are written, when kept across caches.
    buffers: Option<Arc<Bf16Buffers>>,
    converted_elems: AtomicU64,
    convert_nanos: AtomicU64,
}

impl Bf16Weights {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache that converts into `buffers` (reused from cache to cache).
    pub fn with_buffers(buffers: Arc<Bf16Buffers>) -> Self {
        Self { buffers: Some(buffers), ..Self::default() }
    }

    /// The bf16 copy of `w` (a CPU f32 tensor of any shape), converted now if this cache has
    /// none yet. The copy is detached: gradients of products with it are routed to `w` by the
    /// ops.
    ///
    /// # Errors
    /// `w` is not an f32 tensor.
    pub fn get(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = copies.get(&w.id()) {
            return Ok(c.clone());
        }
        if w.dtype() != DType::F32 {
            candle_core::bail!("bf16 weights: {:?} weight, expected f32", w.dtype());
        }
        let t0 = std::time::Instant::now();
        let c = match &self.buffers {
            Some(b) => b.convert(w)?,
            None => super::blas::to_bf16(&w.detach())?,
        };
        self.convert_nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.converted_elems.fetch_add(w.elem_count() as u64, Ordering::Relaxed);
        copies.insert(w.id(), c.clone());
        Ok(c)
    }

    /// `(elements converted, seconds spent converting)` so far.
    pub fn conversion_stats(&self) -> (u64, f64) {
        (
            self.converted_elems.load(Ordering::Relaxed),
            self.convert_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        )
    }
}

thread_local! {
    /// The open [`autocast`] scope of this thread.
    static AUTOCAST: RefCell<Option<Arc<Bf16Weights>>> = const { RefCell::new(None) };
}

/// Closes an [`autocast`] scope when dropped (restoring the enclosing one).
#[derive(Debug)]
#[must_use = "the scope closes when the guard is dropped"]
pub struct AutocastGuard {
    prev: Option<Arc<Bf16Weights>>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        AUTOCAST.with(|a| *a.borrow_mut() = prev);
    }
}

/// Opens a mixed-precision scope on this thread: with `Some(weights)` the matrix products the
/// ops record for f32 tensors run with bf16 operands (weights' copies from `weights`) and f32
/// accumulation until the guard drops; `None` opens an f32 scope (products in f32).
///
/// ```
/// use std::sync::Arc;
/// use candle_core::{DType, Device, Tensor, Var};
/// use rl_policy::ops::{self, precision::{autocast, Bf16Weights}};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let w = Var::from_tensor(&Tensor::new(&[[1.0f32 + 1.0 / 512.0, 3.0]], &Device::Cpu)?)?;
/// let x = Tensor::new(&[[1.0f32, 1.0]], &Device::Cpu)?;
/// let f32_out = ops::linear(&x, w.as_tensor(), None)?;
/// let cache = Arc::new(Bf16Weights::new());
/// let (bf16_out, grads) = {
///     let _scope = autocast(Some(cache.clone()));
///     let y = ops::linear(&x, w.as_tensor(), None)?;
///     let g = y.sum_all()?.backward()?;
///     (y, g)
/// };
/// // 1 + 2⁻⁹ is not a bf16 number: it rounds to 1 in the product.
/// assert_eq!(f32_out.to_vec2::<f32>()?[0][0], 4.0 + 1.0 / 512.0);
/// assert_eq!(bf16_out.to_vec2::<f32>()?[0][0], 4.0);
/// assert_eq!(bf16_out.dtype(), DType::F32);
/// // The weight's gradient is f32, for the f32 master.
/// assert_eq!(grads.get(w.as_tensor()).unwrap().to_vec2::<f32>()?, vec![vec![1.0, 1.0]]);
/// assert_eq!(cache.conversion_stats().0, 2);
/// # Ok(()) }
/// ```
pub fn autocast(weights: Option<Arc<Bf16Weights>>) -> AutocastGuard {
    let prev = AUTOCAST.with(|a| std::mem::replace(&mut *a.borrow_mut(), weights));
    AutocastGuard { prev }
}

/// The open bf16 scope's weight cache when it applies to a product of `x` (f32).
pub(crate) fn bf16_for(x: &Tensor) -> Option<Arc<Bf16Weights>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    AUTOCAST.with(|a| a.borrow().clone())
}

/// Whether `t` is a bf16 tensor without a graph, i.e. a bf16 key/value cache, which the
/// products of a bf16 scope take as their second operand and give no gradient to.
pub(crate) fn is_bf16_cache(t: &Tensor) -> bool {
    t.dtype() == DType::BF16 && !t.track_op()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{CpuStorage, DType, Device, Storage, Tensor, Var};

    use super::{Bf16Buffers, Bf16Weights};

    /// The address of a CPU tensor's storage.
    fn addr(t: &Tensor) -> usize {
        let (s, _) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(CpuStorage::BF16(v)) => v.as_ptr() as usize,
            _ => panic!("a CPU bf16 tensor"),
        }
    }

    /// A cache made after an update converts the new weights into the buffer the previous cache
    /// used: same memory, the new values (equal to a fresh conversion), which the older cache's
    /// copy now reads too.
    #[test]
    fn caches_sharing_buffers_convert_in_place() {
        let v = |scale: f32| {
            Tensor::from_iter((0..6 * 70).map(|i| (i as f32 * 0.37).sin() * scale), &Device::Cpu)
                .unwrap()
                .reshape((6, 70))
                .unwrap()
        };
        let w = Var::from_tensor(&v(1.0)).unwrap();
        let buffers = Arc::new(Bf16Buffers::new());
        let first = Bf16Weights::with_buffers(buffers.clone()).get(w.as_tensor()).unwrap();
        let fresh = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let same = |a: &Tensor, b: &Tensor| {
            a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(&first, &fresh(&v(1.0))));
        w.set(&v(-3.0)).unwrap();
        // A later decoder sees the weight through a detached view (a tensor id of its own).
        let second = Bf16Weights::with_buffers(buffers).get(&w.as_tensor().detach()).unwrap();
        assert!(same(&second, &fresh(&v(-3.0))), "the new weights");
        assert_eq!(addr(&first), addr(&second), "converted into the same buffer");
        assert!(same(&first, &fresh(&v(-3.0))), "the older copy reads the new weights");
        // Without shared buffers a cache makes its own copy.
        let own = Bf16Weights::new().get(w.as_tensor()).unwrap();
        assert_ne!(addr(&own), addr(&second));
    }

    /// The in-place conversion refuses a destination that is not bf16 or a size mismatch.
    #[test]
    fn in_place_conversion_checks_its_operands() {
        let src = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let f32_dst = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let err = f32_dst.inplace_op2(&src, &crate::ops::blas::IntoBf16).unwrap_err();
        assert!(err.to_string().contains("bf16 destination"), "{err}");
        let short = Tensor::zeros(5, DType::BF16, &Device::Cpu).unwrap();
        let err = short.inplace_op2(&src, &crate::ops::blas::IntoBf16).unwrap_err();
        assert!(err.to_string().contains("5 bf16 slots for 6 values"), "{err}");
    }
}
