//! Fused CPU kernels with analytic backward passes for the differentiable decoder path.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward pass (they detach
//! the graph), and composing the same formulas from primitive ops costs many full-size
//! temporaries in the forward pass and many more in the backward pass. Each function here is one
//! candle custom op whose forward and backward are single passes over the data (rows in parallel
//! with rayon), registered with `apply_op*` so gradients flow through it.
//!
//! The fused kernels run for CPU tensors of dtype f32 or f64 and, with the `cuda` feature, for
//! CUDA tensors of dtype f32, f64, bf16 or f16 (kernels in `kernels/ops.cu`, compiled to PTX by
//! nvcc at build time, tested against the CPU kernels where a GPU is present; [`linear`] uses
//! cuBLAS through candle there). On other devices and dtypes every function falls back to the
//! same formula composed from candle ops that have backward passes, so results agree everywhere
//! (tests compare both, values and gradients). The composed versions are public too
//! (`*_composed`), as the reference formulas and for benchmarks. The matrix products inside the
//! ops run in [`blas`] on the CPU (the `gemm` crate, or Intel MKL when enabled). A [`GradSink`]
//! makes [`linear`] and [`head_log_prob_entropy`] accumulate weight gradients in place across
//! backward passes (gradient accumulation without a second full set of gradients); while one
//! holds all of a decoder layer's weights, a training pass on the CPU records the whole layer as
//! one node with a hand-written backward pass (`layer`, see `docs/policy.md`). In a bf16
//! [`autocast`] scope ([`precision`]) the matrix products take bf16 operands and accumulate in
//! f32 (mixed precision).
//!
//! | function | input | output |
//! |---|---|---|
//! | [`rms_norm`] | `x: (..., H)`, `w: (H)` | `(..., H)` |
//! | [`split_heads`] | `x: (B, S, n·d)`, optional `cos, sin: (B, S, d/2)` | `(B, g, (n/g)·S, d)` |
//! | [`merge_heads`] | `(B, g, (n/g)·S, d)` | `(B, S, n·d)` |
//! | [`linear`] | `x: (..., in)`, `w: (out, in)`, `bias: (out)` | `(..., out)` |
//! | [`matmul`] | `a: (..., m, k)`, `b: (..., k, n)` | `(..., m, n)` |
//! | [`masked_softmax`] | `scores: (B, G, R, K)`, `mask: (B, 1, S, K)`, `R = r·S` | `(B, G, R, K)` |
//! | [`attention_probs`] | `q: (B, G, R, d)`, `k: (B, G, K, d)`, `mask: (B, 1, S, K)` | `(B, G, R, K)` |
//! | [`swiglu`] | `gate, up: (..., I)` | `(..., I)` |
//! | [`log_prob_entropy`] | `logits: (N, V)`, `targets: (N)` u32 | `(N)`, `(N)` |
//! | [`head_log_prob_entropy`] | `x: (N, H)`, `w: (V, H)`, `targets: (N)` u32 | `(N)`, `(N)` |

pub mod blas;
#[cfg(feature = "cuda")]
mod cuda;
mod sink;

mod attention;
mod heads;
mod kernel;
mod layer;
mod linear;
mod logprob;
mod norm;
pub mod precision;
mod swiglu;
#[cfg(test)]
mod tests;

// The kernels, visible to the sibling modules, `cuda` and the tests through `use super::*`.
#[allow(unused_imports)]
use {attention::*, heads::*, kernel::*, linear::*, logprob::*, norm::*, swiglu::*};

pub use attention::{attention_probs, masked_softmax, masked_softmax_composed};
pub use heads::{merge_heads, merge_heads_composed, split_heads, split_heads_composed};
pub(crate) use kernel::exp_f32;
pub use kernel::fused_available;
pub(crate) use layer::{LayerShape, LayerWeights, decoder_layer};
/// The order of a layer's weights in [`LayerWeights`]' arrays.
pub(crate) mod layer_index {
    pub(crate) use super::layer::{DOWN, GATE, K, O, Q, UP, V};
}
pub use linear::{linear, linear_add, matmul, swiglu_linear};
pub use logprob::{head_log_prob_entropy, log_prob_entropy, log_prob_entropy_composed};
pub use norm::{rms_norm, rms_norm_composed};
pub use precision::{ComputeDtype, autocast};
pub use sink::{GradSink, GradSinkError};
pub use swiglu::{swiglu, swiglu_composed};
