//! Per-token log-probs and entropies of response tokens, chunked over the rows so that at most one
//! chunk-sized logits gradient is live at a time in the backward pass.

use candle_core::{DType, Tensor};

use crate::model::{AttentionLayout, Mode, Transformer};
use crate::{PolicyError, Result};

/// Default budget of logits elements per chunk (`rows · V`): 32 Mi floats (128 MiB in f32).
pub const DEFAULT_CHUNK_ELEMENTS: usize = 32 << 20;

/// A prompt/response batch as token ids and masks.
///
/// | field | shape | dtype |
/// |---|---|---|
/// | `prompt_ids` | `(B, P)` left-padded, `P >= 1` | u32 |
/// | `prompt_mask` | `(B, P)` 1 on real tokens | any numeric |
/// | `response_ids` | `(B, T)` right-padded | u32 |
/// | `response_mask` | `(B, T)` 1 on real tokens | any numeric |
#[derive(Clone, Copy, Debug)]
pub struct PromptResponse<'a> {
    /// `(B, P)` u32, left-padded.
    pub prompt_ids: &'a Tensor,
    /// `(B, P)`, 1 on real prompt tokens.
    pub prompt_mask: &'a Tensor,
    /// `(B, T)` u32, right-padded.
    pub response_ids: &'a Tensor,
    /// `(B, T)`, 1 on real response tokens.
    pub response_mask: &'a Tensor,
}

fn mask_rows(mask: &Tensor, what: &str) -> Result<Vec<Vec<bool>>> {
    let m = mask
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()
        .map_err(|e| PolicyError::input(what, e.to_string()))?;
    Ok(m.into_iter().map(|r| r.into_iter().map(|v| v != 0.0).collect()).collect())
}

impl PromptResponse<'_> {
    /// Checks shapes, `P >= 1` and that every id is below `vocab`; returns `(B, P, T)`.
    ///
    /// # Errors
    /// [`PolicyError::Input`] naming the offending tensor.
    pub fn check(&self, vocab: usize) -> Result<(usize, usize, usize)> {
        let (b, p) =
            self.prompt_ids.dims2().map_err(|e| PolicyError::input("prompt_ids", e.to_string()))?;
        let (rb, t) = self
            .response_ids
            .dims2()
            .map_err(|e| PolicyError::input("response_ids", e.to_string()))?;
        if p == 0 || b == 0 || rb != b {
            return Err(PolicyError::input(
                "prompt_ids",
                format!("need B >= 1, P >= 1 and matching B, got ({b}, {p}) and ({rb}, {t})"),
            ));
        }
        for (what, m, want) in [
            ("prompt_mask", self.prompt_mask, [b, p]),
            ("response_mask", self.response_mask, [b, t]),
        ] {
            if m.dims() != want {
                return Err(PolicyError::input(
                    what,
                    format!("shape {:?}, expected {want:?}", m.dims()),
                ));
            }
        }
        for (what, ids) in [("prompt_ids", self.prompt_ids), ("response_ids", self.response_ids)] {
            if ids.elem_count() == 0 {
                continue;
            }
            let ids = ids.to_dtype(DType::U32)?;
            let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
            if max >= vocab {
                return Err(PolicyError::input(
                    what,
                    format!("token id {max} >= vocab size {vocab}"),
                ));
            }
        }
        Ok((b, p, t))
    }

    /// Final hidden states `(B, T, H)` at the positions that predict each response token
    /// (`P - 1 .. P + T - 2` of the joint sequence).
    ///
    /// # Errors
    /// Those of [`PromptResponse::check`]; [`PolicyError::Input`] naming the row when a row's
    /// prompt + response tokens exceed the model's context (`max_position_embeddings`).
    pub fn response_hidden(&self, model: &Transformer, mode: Mode) -> Result<Tensor> {
        let (_, p, t) = self.check(model.config().vocab_size)?;
        let ids = Tensor::cat(
            &[self.prompt_ids.to_dtype(DType::U32)?, self.response_ids.to_dtype(DType::U32)?],
            1,
        )?;
        let valid: Vec<Vec<bool>> = mask_rows(self.prompt_mask, "prompt_mask")?
            .into_iter()
            .zip(mask_rows(self.response_mask, "response_mask")?)
            .map(|(mut a, b)| {
                a.extend(b);
                a
            })
            .collect();
        let context = model.config().max_position_embeddings;
        if let Some((row, n)) = valid
            .iter()
            .map(|v| v.iter().filter(|&&x| x).count())
            .enumerate()
            .find(|&(_, n)| n > context)
        {
            return Err(PolicyError::input(
                format!("batch row {row}"),
                format!(
                    "{n} prompt + response tokens, over the model's context of {context} \
                     (max_position_embeddings)"
                ),
            ));
        }
        let layout = AttentionLayout::new(&valid, p + t, model.dtype(), model.device())?;
        let hidden = model.hidden_states(&ids, &layout, None, mode)?;
        Ok(hidden.narrow(1, p - 1, t)?)
    }
}

/// `(B, T)` log-probs of `targets` (and entropies `-Σ_v p log p` when `with_entropy`) from hidden
/// states `(B, T, H)`, computed `chunk · B` rows at a time (`chunk = 0`: automatic, see
/// [`DEFAULT_CHUNK_ELEMENTS`]), multiplied by `mask: (B, T)` so padding is exactly 0.
/// Outputs have the model dtype and are differentiable when `hidden` and the model are; the
/// `(B·T, V)` logits never enter the autograd graph
/// ([`Transformer::head_log_prob_entropy`]).
///
/// # Errors
/// Shape mismatches.
pub fn token_log_probs(
    model: &Transformer,
    hidden: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    chunk: usize,
    with_entropy: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t, h) = hidden.dims3()?;
    let v = model.config().vocab_size;
    let rows = if chunk == 0 { (DEFAULT_CHUNK_ELEMENTS / v.max(1)).max(1) } else { chunk * b };
    let (lp, ent) = if t == 0 {
        let zeros = Tensor::zeros((b, 0), model.dtype(), model.device())?;
        (zeros.clone(), zeros)
    } else {
        let targets = targets.to_dtype(DType::U32)?.flatten_all()?;
        let x = hidden.contiguous()?.reshape((b * t, h))?;
        let (lp, ent) = model.head_log_prob_entropy(&x, &targets, rows)?;
        (lp.reshape((b, t))?, ent.reshape((b, t))?)
    };
    let mask = mask.to_dtype(model.dtype())?;
    let lp = (lp * &mask)?;
    let ent = if with_entropy { Some((ent * &mask)?) } else { None };
    Ok((lp, ent))
}
