//! Batched sampling with a per-layer KV cache over left-padded prompts.
//!
//! Token choice: logits are divided by the temperature, then top-k, top-p (nucleus) and min-p
//! filters are applied in that order (the order of transformers' logits warpers), and a token is
//! drawn from the renormalised distribution with a [`StdRng`] seeded from
//! [`SamplingConfig::seed`] (draws are consumed row by row, step by step, so a run is reproducible
//! for a given seed, batch and model). Temperature 0 is greedy (first maximal logit).
//!
//! The recorded log-prob of each chosen token is `log softmax(logits)` of the **unmodified model
//! distribution** (temperature 1, no filtering), which is what verl/TRL recompute as the "old"
//! log-probs for the importance ratio.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use rl_core::{FinishReason, SamplingConfig};

use crate::model::{AttentionLayout, KvCache, Mode, Transformer};
use crate::{PolicyError, Result};

/// Generated responses, one row per (prompt, sample) in prompt-major order: row `i·n + j` is
/// sample `j` of prompt `i`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// Response token ids of each row (EOS / stop-string tokens included, no padding).
    pub tokens: Vec<Vec<u32>>,
    /// Log-prob of each chosen token under the temperature-1 model distribution.
    pub log_probs: Vec<Vec<f32>>,
    /// Why each row stopped.
    pub finish: Vec<FinishReason>,
}

/// Log-softmax of one row, in f64 for accuracy.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = max_logit(logits) as f64;
    let lse = logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// Elements per block of the vectorized passes over a row of logits (partial sums in f32 within
/// a block, in f64 across blocks).
const BLOCK: usize = 256;

/// `Σ e^(scale·(l - max))` of a row (its `max` given) with the kernels' vectorized f32
/// exponential, summed per block in f32 and across blocks in f64; `exps` (when given) receives
/// every term.
fn sum_exp(logits: &[f32], max: f32, scale: f32, mut exps: Option<&mut Vec<f32>>) -> f64 {
    if let Some(e) = exps.as_deref_mut() {
        e.clear();
        e.resize(logits.len(), 0.0);
    }
    let mut total = 0f64;
    for (b, chunk) in logits.chunks(BLOCK).enumerate() {
        let mut part = [0f32; BLOCK];
        for (p, &l) in part.iter_mut().zip(chunk) {
            *p = crate::ops::exp_f32((l - max) * scale);
        }
        total += part[..chunk.len()].iter().sum::<f32>() as f64;
        if let Some(e) = exps.as_deref_mut() {
            e[b * BLOCK..b * BLOCK + chunk.len()].copy_from_slice(&part[..chunk.len()]);
        }
    }
    total
}

/// The largest logit of a row.
fn max_logit(logits: &[f32]) -> f32 {
    logits.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `log softmax(logits)[tok]` at temperature 1 (the recorded log-prob of a chosen token).
fn token_log_prob(logits: &[f32], tok: u32) -> f32 {
    let max = max_logit(logits);
    let lse = sum_exp(logits, max, 1.0, None).ln() + max as f64;
    (logits[tok as usize] as f64 - lse) as f32
}

/// The first maximal logit.
fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best })
        .0 as u32
}

/// Chooses a token from one row of logits (see the module docs for the order of the filters).
/// Draws one uniform number from `rng` unless the temperature is 0 (greedy).
pub fn choose_token(logits: &[f32], cfg: &SamplingConfig, rng: &mut StdRng) -> u32 {
    let u = if cfg.temperature == 0.0 { 0.0 } else { rng.random::<f64>() };
    choose_with(logits, cfg, u)
}

/// [`choose_token`] with its uniform draw `u` in `[0, 1)` given (ignored when greedy), so rows
/// can be chosen in parallel from draws taken in row order.
fn choose_with(logits: &[f32], cfg: &SamplingConfig, u: f64) -> u32 {
    if cfg.temperature == 0.0 {
        return argmax(logits);
    }
    let filtered =
        cfg.top_k.is_some_and(|k| k < logits.len()) || cfg.top_p < 1.0 || cfg.min_p > 0.0;
    if !filtered {
        // Plain softmax sampling: one vectorized pass for the weights, one scan for the draw.
        let max = max_logit(logits);
        let mut weights = Vec::new();
        let total = sum_exp(logits, max, 1.0 / cfg.temperature, Some(&mut weights));
        if !(total > 0.0 && total.is_finite()) {
            return argmax(logits);
        }
        return draw(&weights, u * total);
    }
    let scaled: Vec<f32> = logits.iter().map(|&l| l / cfg.temperature).collect();
    let mut probs: Vec<f64> = log_softmax(&scaled).into_iter().map(f64::exp).collect();
    let needs_sort = cfg.top_k.is_some_and(|k| k < probs.len()) || cfg.top_p < 1.0;
    if needs_sort {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut keep = cfg.top_k.unwrap_or(order.len()).min(order.len());
        if cfg.top_p < 1.0 {
            let mass: f64 = order[..keep].iter().map(|&i| probs[i]).sum();
            let mut cum = 0.0;
            for (n, &i) in order[..keep].iter().enumerate() {
                cum += probs[i] / mass;
                if cum >= cfg.top_p as f64 {
                    keep = n + 1;
                    break;
                }
            }
        }
        for &i in &order[keep..] {
            probs[i] = 0.0;
        }
    }
    if cfg.min_p > 0.0 {
        let pmax = probs.iter().copied().fold(0.0, f64::max);
        let threshold = cfg.min_p as f64 * pmax;
        probs.iter_mut().filter(|p| **p < threshold).for_each(|p| *p = 0.0);
    }
    let total: f64 = probs.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax(logits);
    }
    draw(&probs, u * total)
}

/// The token whose cumulative weight (`weights` in token order) first exceeds `target`.
fn draw<T: Copy + Into<f64>>(weights: &[T], mut target: f64) -> u32 {
    for (i, &w) in weights.iter().enumerate() {
        let w = w.into();
        if w > 0.0 {
            if target < w {
                return i as u32;
            }
            target -= w;
        }
    }
    // Rounding left a sliver of mass: the last token with non-zero probability.
    weights.iter().rposition(|&w| w.into() > 0.0).unwrap_or(0) as u32
}

/// `stop(response_ids)`: `true` when the response (decoded) contains a stop string.
pub type StopFn<'a> = dyn Fn(&[u32]) -> Result<bool> + 'a;

/// What ends a response besides `max_new_tokens`.
#[derive(Clone, Copy)]
pub struct StopRules<'a> {
    /// End-of-sequence ids: generating any of them ends the response (the token is kept).
    pub eos_ids: &'a [u32],
    /// `stop(response_ids)` is `true` when the response contains a stop string.
    pub stop: Option<&'a StopFn<'a>>,
}

impl std::fmt::Debug for StopRules<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopRules")
            .field("eos_ids", &self.eos_ids)
            .field("stop", &self.stop.is_some())
            .finish()
    }
}

/// Samples `cfg.n` responses for each prompt (`prompts[i]`: token ids, non-empty) with a KV cache,
/// using the [`Mode::Fused`] forward of `model` (build it with
/// [`LanguageModel::detached`](crate::LanguageModel::detached) so no autograd graph is kept).
/// Prompts are left-padded with `pad_id`; finished rows are removed from the batch and the cache.
///
/// # Errors
/// Invalid sampling config, empty prompts, ids outside the vocabulary, `max_new_tokens == 0`, a
/// prompt whose length plus `max_new_tokens` exceeds the model's context
/// (`max_position_embeddings`; the error names the prompt's index and both lengths).
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    rules: StopRules<'_>,
    pad_id: u32,
) -> Result<Generation> {
    cfg.validate()?;
    let vocab = model.config().vocab_size;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(PolicyError::input(
            "prompts",
            "need at least one prompt, each with at least one token",
        ));
    }
    if let Some(bad) =
        prompts.iter().flatten().copied().chain([pad_id]).find(|&id| id as usize >= vocab)
    {
        return Err(PolicyError::input("prompts", format!("token id {bad} >= vocab size {vocab}")));
    }
    if cfg.max_new_tokens == 0 {
        return Err(PolicyError::input("max_new_tokens", "must be >= 1"));
    }
    // Checked before any allocation sized by the prompts (a 10 KB prompt would otherwise grow
    // the prefill attention to gigabytes).
    let context = model.config().max_position_embeddings;
    if let Some((i, len)) = prompts
        .iter()
        .map(Vec::len)
        .enumerate()
        .find(|&(_, len)| len.saturating_add(cfg.max_new_tokens) > context)
    {
        return Err(PolicyError::input(
            format!("prompts[{i}]"),
            format!(
                "{len} prompt tokens + max_new_tokens {} = {} positions, over the model's \
                 context of {context} (max_position_embeddings); shorten the prompt or lower \
                 max_new_tokens",
                cfg.max_new_tokens,
                len.saturating_add(cfg.max_new_tokens),
            ),
        ));
    }
    let n = cfg.n.max(1);
    let r = prompts.len() * n;
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let padded = |x: &Vec<u32>| (0..p).map(|j| j >= p - x.len()).collect::<Vec<bool>>();
    let ids: Vec<u32> = prompts
        .iter()
        .flat_map(|x| std::iter::repeat_n(pad_id, p - x.len()).chain(x.iter().copied()))
        .collect();
    let dev = model.device();
    // Prefill: each prompt once; its `n` samples (rows `i·n .. i·n + n`) then share its keys,
    // values and first-token logits.
    let mut cache = KvCache::with_capacity(model.config().num_layers, p + cfg.max_new_tokens);
    let prompt_valid: Vec<Vec<bool>> = prompts.iter().map(padded).collect();
    let layout = AttentionLayout::new(&prompt_valid, p, model.dtype(), dev)?;
    let input = Tensor::from_vec(ids, (prompts.len(), p), dev)?;
    let hidden = model.hidden_states(&input, &layout, Some(&mut cache), Mode::Fused)?;
    let first = last_logits(model, &hidden)?;
    let mut next = Next::Logits(if n == 1 {
        first
    } else {
        cache.select_rows(&(0..r).map(|i| i / n).collect::<Vec<_>>())?;
        first.iter().flat_map(|l| std::iter::repeat_n(l, n).cloned()).collect()
    });
    let mut valid: Vec<Vec<bool>> =
        prompt_valid.iter().flat_map(|v| std::iter::repeat_n(v, n).cloned()).collect();
    let mut out = Generation {
        tokens: vec![Vec::new(); r],
        log_probs: vec![Vec::new(); r],
        finish: vec![FinishReason::Length; r],
    };
    let mut active = vec![true; r];
    // `alive[i]`: the output row computed at batch position `i`. Finished rows are dropped from
    // the batch and the KV cache, so they cost nothing afterwards.
    let mut alive: Vec<usize> = (0..r).collect();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    for _ in 0..cfg.max_new_tokens {
        let logits = match next {
            Next::Logits(l) => l,
            Next::Tokens(input) => {
                let layout = AttentionLayout::new(&valid, 1, model.dtype(), dev)?;
                let hidden = model.hidden_states(&input, &layout, Some(&mut cache), Mode::Fused)?;
                last_logits(model, &hidden)?
            }
        };
        for (&row, logits) in alive.iter().zip(&logits) {
            if let Some(bad) = logits.iter().find(|x| !x.is_finite()) {
                return Err(PolicyError::input(
                    "logits",
                    format!("non-finite logit {bad} in row {row}"),
                ));
            }
        }
        // One draw per row in row order (as `choose_token` would take them), then the rows'
        // softmax passes in parallel.
        let draws: Vec<f64> = alive
            .iter()
            .map(|_| if cfg.temperature == 0.0 { 0.0 } else { rng.random::<f64>() })
            .collect();
        let chosen: Vec<(u32, f32)> = logits
            .par_iter()
            .zip(&draws)
            .map(|(logits, &u)| {
                let tok = choose_with(logits, cfg, u);
                (tok, token_log_prob(logits, tok))
            })
            .collect();
        let mut tokens = Vec::with_capacity(alive.len());
        for (&row, &(tok, lp)) in alive.iter().zip(&chosen) {
            out.tokens[row].push(tok);
            out.log_probs[row].push(lp);
            if rules.eos_ids.contains(&tok) {
                out.finish[row] = FinishReason::Eos;
                active[row] = false;
            } else if let Some(stop) = rules.stop
                && stop(&out.tokens[row])?
            {
                out.finish[row] = FinishReason::StopString;
                active[row] = false;
            }
            tokens.push(tok);
        }
        let keep: Vec<usize> = (0..alive.len()).filter(|&i| active[alive[i]]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < alive.len() {
            cache.select_rows(&keep)?;
            valid = keep.iter().map(|&i| std::mem::take(&mut valid[i])).collect();
            tokens = keep.iter().map(|&i| tokens[i]).collect();
            alive = keep.iter().map(|&i| alive[i]).collect();
        }
        for v in valid.iter_mut() {
            v.push(true);
        }
        next = Next::Tokens(Tensor::from_vec(tokens, (alive.len(), 1), dev)?);
    }
    Ok(out)
}

/// What a decoding step of [`generate`] starts from.
enum Next {
    /// The logits of every row, already computed (the prefill's, shared by a prompt's samples).
    Logits(Vec<Vec<f32>>),
    /// The `(rows, 1)` tokens chosen last step, to run through the model.
    Tokens(Tensor),
}

/// f32 logits `(B, V)` of the last position of `hidden: (B, S, H)`, one `Vec` per row.
fn last_logits(model: &Transformer, hidden: &Tensor) -> Result<Vec<Vec<f32>>> {
    let s = hidden.dim(1)?;
    Ok(model
        .logits(&hidden.narrow(1, s - 1, 1)?.squeeze(1)?)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f32) -> SamplingConfig {
        SamplingConfig { temperature: t, ..SamplingConfig::default() }
    }

    #[test]
    fn greedy_and_filters() {
        let mut rng = StdRng::seed_from_u64(0);
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        assert_eq!(choose_token(&logits, &cfg(0.0), &mut rng), 1);
        let top1 = SamplingConfig { top_k: Some(1), ..cfg(1.0) };
        let tiny_p = SamplingConfig { top_p: 1e-3, ..cfg(1.0) };
        let strict_min_p = SamplingConfig { min_p: 0.99, ..cfg(1.0) };
        for _ in 0..50 {
            assert_eq!(choose_token(&logits, &top1, &mut rng), 1);
            assert_eq!(choose_token(&logits, &tiny_p, &mut rng), 1);
            assert_eq!(choose_token(&logits, &strict_min_p, &mut rng), 1);
            let top2 =
                choose_token(&logits, &SamplingConfig { top_k: Some(2), ..cfg(1.0) }, &mut rng);
            assert!(top2 == 1 || top2 == 3);
        }
    }

    proptest::proptest! {
        /// Every sampled token survives the filters: it is among the `k` most likely, inside the
        /// top-p nucleus and above the min-p threshold.
        #[test]
        fn sampled_tokens_respect_filters(
            logits in proptest::collection::vec(-5f32..5.0, 2..40),
            k in 1usize..10,
            top_p in 0.05f32..1.0,
            min_p in 0f32..0.5,
            seed in 0u64..1000,
        ) {
            let cfg = SamplingConfig { top_k: Some(k), top_p, min_p, ..cfg(1.0) };
            let tok = choose_token(&logits, &cfg, &mut StdRng::seed_from_u64(seed)) as usize;
            let probs: Vec<f64> = log_softmax(&logits).into_iter().map(f64::exp).collect();
            let better = probs.iter().filter(|&&p| p > probs[tok]).count();
            proptest::prop_assert!(better < k);
            let mass_before: f64 = probs.iter().filter(|&&p| p > probs[tok]).sum();
            proptest::prop_assert!(mass_before < top_p as f64 + 1e-9);
            let pmax = probs.iter().copied().fold(0.0, f64::max);
            proptest::prop_assert!(probs[tok] >= min_p as f64 * pmax * (1.0 - 1e-9) || better == 0);
        }
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let mut rng = StdRng::seed_from_u64(7);
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()];
        let mut counts = [0usize; 3];
        let n = 30_000;
        for _ in 0..n {
            counts[choose_token(&logits, &cfg(1.0), &mut rng) as usize] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let expected = (i + 1) as f64 / 6.0;
            assert!((*c as f64 / n as f64 - expected).abs() < 0.015, "{counts:?}");
        }
    }
}
