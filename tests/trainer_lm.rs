//! A real (tiny, random) rl-policy language model and value model through the PPO recipe: the
//! trainer, written against rl-core's traits, driving rl-policy's decoder (checkpoints as Hugging
//! Face directories, exact resume).

use std::sync::Arc;

use rl_zero::core::{
    Device, Metrics, Policy, Prompt, ReferenceModel, RolloutBatch, Sample, SamplingConfig, Tensor,
    TokenLogProbs, Var,
};
use rl_zero::loss::{Aggregation, Kl, KlEstimator, KlLoss};
use rl_zero::policy::testing_assets::Letters;
use rl_zero::policy::{LanguageModel, LmPolicy, Mode, ModelConfig, ValueModel};
use rl_zero::trainer::{AlgorithmConfig, Recipe, Trainer, TrainerConfig};

type R<T = ()> = rl_zero::trainer::Result<T>;

/// Metrics without wall-clock timings (`time/*`, `perf/*`).
fn deterministic(m: &Metrics) -> Vec<(String, f64)> {
    m.iter()
        .filter(|(k, _)| !k.starts_with("time/") && !k.starts_with("perf/"))
        .map(|(k, v)| (k.into(), v))
        .collect()
}

fn model() -> R<LanguageModel> {
    let cfg = ModelConfig::from_hf_json(serde_json::json!({
        "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    }))
    .map_err(rl_core::Error::from)?;
    Ok(LanguageModel::random(cfg, 0, rl_zero::core::DType::F32, &Device::Cpu)
        .map_err(rl_core::Error::from)?)
}

fn ppo() -> R<Trainer<LmPolicy, ValueModel>> {
    let m = model()?;
    let critic = ValueModel::from_model(&m, 1).map_err(rl_core::Error::from)?;
    let policy = LmPolicy::new(m).with_codec(Arc::new(Letters)).with_eos_ids(vec![1]);
    let mut r = Recipe::open_reasoner_zero();
    r.trainer.sampling = SamplingConfig { n: 4, max_new_tokens: 6, ..SamplingConfig::default() };
    r.trainer.micro_batch_size = 3;
    r.trainer.mini_batch_groups = Some(1);
    r.trainer.actor.lr = 1e-2;
    r.trainer.critic.lr = 1e-2;
    let vowel = |s: &Sample| -> rl_core::Result<f32> {
        Ok(s.response.contains(['a', 'e', 'i', 'o', 'u']) as u8 as f32)
    };
    r.ppo(policy, critic, vowel)
}

/// Two PPO steps on a real decoder + value head, a checkpoint, and a resumed trainer that
/// reproduces the third step exactly; the policy checkpoint is a Hugging Face directory.
#[test]
fn ppo_on_a_tiny_lm_resumes_exactly() -> R {
    let dir = tempfile::tempdir()?;
    let ps = [Prompt::new("ab", "x"), Prompt::new("cd", "y")];
    let mut a = ppo()?;
    for _ in 0..2 {
        let m = a.step(&ps)?.metrics;
        for k in ["actor/loss", "actor/grad_norm", "critic/loss", "critic/grad_norm", "reward/mean"]
        {
            assert!(m.get(k).is_some_and(f64::is_finite), "{k}: {m:?}");
        }
        // Sampler (fused forward) and trainer (differentiable forward) agree closely.
        let diff = m.get("rollout/log_prob_abs_diff").expect("recomputed");
        assert!(diff < 1e-4, "sampler/trainer log-prob mismatch {diff}");
    }
    assert_eq!((a.state().actor_updates, a.state().critic_updates), (4, 4));
    let saved = a.save_checkpoint(dir.path())?;
    assert!(
        saved.join("policy/model.safetensors").exists()
            && saved.join("policy/config.json").exists()
    );
    let expected = a.step(&ps)?;

    let mut b = ppo()?;
    b.resume(dir.path())?.expect("checkpoint");
    let got = b.step(&ps)?;
    assert_eq!(deterministic(&got.metrics), deterministic(&expected.metrics));
    // The reloaded HF directory holds the trained weights.
    let reloaded =
        LanguageModel::from_hf_dir(&saved.join("policy"), rl_zero::core::DType::F32, &Device::Cpu)
            .map_err(rl_core::Error::from)?;
    let fresh = model()?;
    let name = "model.layers.0.mlp.up_proj.weight";
    let get = |m: &LanguageModel| {
        m.named_vars().into_iter().find(|(n, _)| n == name).map(|(_, v)| v).expect(name)
    };
    let diff = get(&reloaded)
        .as_tensor()
        .sub(get(&fresh).as_tensor())?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff > 0.0, "trained weights differ from the initial ones");
    Ok(())
}

/// The policy under training, recording each rollout batch with its log-probs under the weights
/// that sampled it (detached), so a test can recompute what the trainer saw.
struct Recording {
    inner: LmPolicy,
    last: Option<(RolloutBatch, Tensor)>,
}

impl Policy for Recording {
    fn generate(
        &mut self,
        prompts: &[Prompt],
        config: &SamplingConfig,
    ) -> rl_core::Result<RolloutBatch> {
        let batch = self.inner.generate(prompts, config)?;
        let lp = self
            .inner
            .log_probs_detached(&batch, false, Mode::Diff)
            .map_err(rl_core::Error::from)?
            .log_probs;
        self.last = Some((batch.clone(), lp));
        Ok(batch)
    }

    fn log_probs(
        &self,
        batch: &RolloutBatch,
        with_entropy: bool,
    ) -> rl_core::Result<TokenLogProbs> {
        self.inner.log_probs(batch, with_entropy)
    }

    fn trainable_vars(&self) -> Vec<Var> {
        self.inner.trainable_vars()
    }
}

/// GRPO with a k3 KL loss against a frozen copy of the initial tiny decoder: the KL is exactly 0
/// in the first update (π = π_ref), positive in the second, and equal to a hand computation of
/// `mean_t(exp(ref − lp) − (ref − lp) − 1)` from the two models on the second step's batch.
#[test]
fn grpo_k3_kl_matches_a_hand_computation_from_the_two_models() -> R {
    let policy = LmPolicy::new(model()?).with_codec(Arc::new(Letters)).with_eos_ids(vec![1]);
    // Two frozen deep copies: one for the trainer, one for the hand computation.
    let frozen = || policy.reference().map_err(rl_core::Error::from);
    let (reference, hand_ref) = (frozen()?, frozen()?);
    let mut r = Recipe { trainer: TrainerConfig::default(), algorithm: AlgorithmConfig::grpo() };
    r.algorithm.kl_loss = Some(KlLoss {
        kl: Kl::new(KlEstimator::K3),
        coef: 0.5,
        aggregation: Aggregation::TokenMean,
    });
    r.trainer.sampling = SamplingConfig { n: 4, max_new_tokens: 6, ..SamplingConfig::default() };
    // One mini-batch, one micro-batch, one epoch: the metric is one token mean over the batch.
    r.trainer.micro_batch_size = 8;
    r.trainer.mini_batch_groups = None;
    r.trainer.actor.lr = 5e-2;
    let vowel = |s: &Sample| -> rl_core::Result<f32> {
        Ok(s.response.contains(['a', 'e', 'i', 'o', 'u']) as u8 as f32)
    };
    let recording = Recording { inner: policy, last: None };
    let mut t = r.builder(recording, vowel)?.reference(reference).build()?;
    let prompts = [Prompt::new("ab", "x"), Prompt::new("cd", "y")];
    let first = t.step(&prompts)?.metrics;
    let kl0 = first.get("actor/kl/kl").expect("the KL metric");
    assert!(kl0.abs() < 1e-7, "π = π_ref in the first update: {kl0}");
    assert!(first.get("actor/grad_norm").expect("grad norm") > 0.0, "the first update moved");

    let second = t.step(&prompts)?.metrics;
    let kl1 = second.get("actor/kl/kl").expect("the KL metric");
    let (batch, lp) = t.policy().last.clone().expect("the second step's batch");
    let ref_lp = hand_ref.reference_log_probs(&batch)?;
    let (lp, ref_lp) = (lp.to_vec2::<f32>()?, ref_lp.to_vec2::<f32>()?);
    let mask = batch.response_mask.to_vec2::<f32>()?;
    let (mut sum, mut tokens) = (0f64, 0f64);
    for ((lp, rl), m) in lp.iter().zip(&ref_lp).zip(&mask) {
        for ((&a, &b), &m) in lp.iter().zip(rl).zip(m) {
            let d = f64::from(b) - f64::from(a);
            sum += f64::from(m) * (d.exp() - d - 1.0);
            tokens += f64::from(m);
        }
    }
    let want = sum / tokens;
    eprintln!("k3 KL: first update {kl0:e}, second {kl1:e}, by hand {want:e}");
    assert!(want > 1e-6, "the policy moved away from the reference: {want}");
    assert!((kl1 - want).abs() <= 1e-4 * want.max(1e-6) + 1e-7, "trainer {kl1} vs hand {want}");
    Ok(())
}
