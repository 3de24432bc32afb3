//! Training and evaluation: [`train_with`] (data parallel, resumable, with an optional inference
//! engine) and [`eval`].

#[allow(clippy::wildcard_imports)]
use super::*;

/// An engine's sampler, its weight sync and the publish interval (`sync_every`).
pub(super) type EngineParts = (RemoteSampler, Box<dyn rl_core::WeightSync>, usize);

/// The engine sampler and weight sync of `file.rollout` / `file.weight_sync` (`None` for local
/// rollouts). The preflight checks the server, model name, tokenizer and context; the log-prob
/// probe runs after the trainer's first publish (the engine may have been started from other
/// weights of the same architecture: the trainer publishes its own before the first rollout).
pub(super) fn connect_engine(
    file: &RunFile,
    codec: Arc<dyn rl_core::TokenCodec>,
    pad_id: u32,
    messages: &mut Vec<String>,
) -> Result<Option<EngineParts>> {
    let Some((engine, cfg)) = file.rollout.engine() else { return Ok(None) };
    let Some(every) = file.weight_sync.sync_every() else {
        bail!("weight_sync: an inference engine needs a [weight_sync] table");
    };
    let sampler = RemoteSampler::connect(engine, cfg.clone(), codec, None)
        .with_context(|| format!("rollout: connecting to {} at {:?}", engine.name(), cfg.urls))?
        .with_pad_id(pad_id);
    messages.push(format!(
        "rollout: {} at {:?} (preflight: {:?})",
        engine.name(),
        cfg.urls,
        sampler.preflight_report()
    ));
    let sync = sampler.weight_sync(&file.weight_sync)?.context("weight_sync: type = \"none\"")?;
    Ok(Some((sampler, sync, every)))
}

/// One point of the held-out accuracy curve.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalPoint {
    /// Training steps completed.
    pub step: u64,
    /// Greedy evaluation at that step.
    pub report: EvalReport,
}

/// What [`train`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// Held-out greedy accuracy over training (first point: before training or at resume).
    pub curve: Vec<EvalPoint>,
    /// Step the run started from (non-zero when resumed).
    pub resumed_from: u64,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// `curves.svg` next to the metrics file (reward, accuracy, held-out accuracy and response
    /// length against the step, [`rl_trainer::plot`]); `None` when it could not be drawn (the
    /// reason is logged).
    pub curves: Option<PathBuf>,
}

/// How [`train_with`] treats an output directory that already holds a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainOptions {
    /// Continue from the latest checkpoint under `run.out/checkpoints` (the run file must equal
    /// the saved `run.toml`, up to the fields [`config_changes`] ignores).
    pub resume: bool,
    /// Delete the run files in `run.out` ([`clear_run_files`]) and start again; other files in
    /// the directory are kept.
    pub overwrite: bool,
    /// With `resume`: accept a run file that differs from the saved `run.toml` (each change
    /// is logged, and `run.toml` is rewritten).
    pub allow_config_change: bool,
}

/// [`train_with`] without `--overwrite`: a fresh run (`resume = false`) refuses a non-empty
/// output directory ([`RunError::OutDirNotEmpty`]).
pub fn train(file: &RunFile, resume: bool, log: &mut dyn FnMut(&str)) -> Result<TrainOutcome> {
    train_with(file, TrainOptions { resume, ..TrainOptions::default() }, log)
}

/// Trains `file`'s recipe: PPO with a critic initialised from the model when the estimator uses
/// values, else the GRPO family. Evaluates greedily on the held-out prompts before training and
/// every `run.eval_every` steps, saves checkpoints under `run.out/checkpoints` every
/// `run.save_every` steps and at the end (keeping the newest `run.keep_last`), writes
/// `run.out/run.toml` and, unless the recipe sets one, `run.out/metrics.jsonl` (training steps
/// and evaluations), and at the end draws it to `curves.svg` next to it. With `opts.resume`,
/// continues from the latest checkpoint (model, optimizers, data order) up to `run.steps`.
/// `log` receives one line per step and evaluation.
///
/// Everything is checked before anything is written: the run file, the output directory (a
/// fresh run needs it empty unless `opts.overwrite`, [`check_out_dir`]; a resumed run needs the
/// saved `run.toml` to match, [`config_changes`]), the model, the dataset and the checkpoint. A
/// run that fails there leaves the disk as it was.
pub fn train_with(
    file: &RunFile,
    opts: TrainOptions,
    log: &mut dyn FnMut(&str),
) -> Result<TrainOutcome> {
    file.validate()?;
    if opts.resume && opts.overwrite {
        bail!("resume and overwrite exclude each other");
    }
    let run = &file.run;
    let mut recipe = file.recipe();
    if recipe.trainer.metrics_path.is_none() {
        recipe.trainer.metrics_path = Some(run.out.join("metrics.jsonl"));
    }
    let metrics = recipe.trainer.metrics_path.clone();
    let root = run.out.join("checkpoints");
    // Data parallel: `RANK` / `WORLD_SIZE` (torchrun, Slurm, `rl-zero launch`) make this process
    // one rank of a group. Rank 0 owns the output directory (checks, run.toml, metrics,
    // evaluations, checkpoints, curves); every rank trains and resumes.
    let group = rl_dist::init()?;
    let (rank, world) = (group.rank(), group.world_size());
    let main_rank = rank == 0;
    // 1. Read-only checks: the output directory, the model, the dataset.
    if !main_rank {
    } else if opts.resume {
        check_resume(file, &root, opts.allow_config_change, log)?;
    } else if !opts.overwrite {
        check_out_dir(&run.out, metrics.as_deref(), true)?;
    }
    let seed = recipe.trainer.seed;
    let mut loaded = load_model(run.model.as_deref(), &run.revision)?;
    set_precision(&mut loaded.model, run)?;
    let (train_set, test) = prompts(&loaded, run, seed)?;
    let mut data = PromptDataset::new(train_set, seed, true)?;
    // 2. The trainer (it opens the metrics file) and the checkpoint; undone on failure.
    if opts.overwrite && main_rank {
        for p in clear_run_files(&run.out, metrics.as_deref())? {
            log(&format!("--overwrite: deleted {}", p.display()));
        }
    }
    let existed = (run.out.exists(), metrics.as_ref().is_some_and(|m| m.exists()));
    let mut messages = Vec::new();
    let built = (|| -> Result<(Box<dyn TrainStep>, u64)> {
        let critic = if recipe.algorithm.advantage.requires_values() {
            Some(ValueModel::from_model(&loaded.model, seed)?)
        } else {
            None
        };
        let codec: Arc<dyn rl_core::TokenCodec> = Arc::new(loaded.tokenizer.clone());
        let policy = policy(loaded.model, loaded.tokenizer);
        let engine = connect_engine(file, codec, policy.pad_id(), &mut messages)?;
        // A KL term or KL in the reward anchors to a frozen copy of the initial policy.
        let reference: Option<Box<dyn ReferenceModel>> = if recipe.algorithm.needs_reference() {
            Some(Box::new(policy.reference()?))
        } else {
            None
        };
        let reward = run.reward.clone();
        let mut builder = recipe.builder(policy, reward)?.maybe_reference(reference);
        if world > 1 {
            builder = builder.process_group(group);
        }
        if let Some((sampler, sync, every)) = engine {
            builder = builder.sampler(sampler).weight_sync(sync, every);
        }
        let mut trainer: Box<dyn TrainStep> = match critic {
            Some(critic) => {
                let mut algorithm = recipe.algorithm.clone();
                algorithm.resolve(&recipe.trainer);
                Box::new(builder.critic(critic, algorithm.value_loss).build()?)
            }
            None => Box::new(builder.build()?),
        };
        let mut resumed_from = 0;
        if opts.resume {
            match trainer.resume(&root)? {
                Some(state) => {
                    if let Some(pos) = state.data {
                        data.seek(pos);
                    }
                    resumed_from = state.step;
                    messages.push(format!("resumed from step {} ({})", state.step, root.display()));
                }
                None => messages
                    .push(format!("no checkpoint under {}: starting afresh", root.display())),
            }
        }
        Ok((trainer, resumed_from))
    })();
    let (mut trainer, resumed_from) = match built {
        Ok(b) => b,
        Err(e) => {
            // Remove what opening the metrics file created (only if still empty).
            if let Some(m) = metrics.as_ref().filter(|_| !existed.1)
                && std::fs::metadata(m).is_ok_and(|md| md.len() == 0)
            {
                let _ = std::fs::remove_file(m);
            }
            if !existed.0 {
                let _ = std::fs::remove_dir(&run.out);
            }
            return Err(e);
        }
    };
    for m in &messages {
        log(m);
    }
    // 3. Writes (rank 0): the effective run file, then training.
    if main_rank {
        std::fs::create_dir_all(&run.out)
            .with_context(|| format!("cannot create {}", run.out.display()))?;
        let run_toml = run.out.join("run.toml");
        std::fs::write(&run_toml, file.to_toml()?)
            .with_context(|| format!("cannot write {}", run_toml.display()))?;
    }
    let drive = Drive { metrics: metrics.as_deref(), main_rank, resumed_from, ..Drive::new(run) };
    drive.run(trainer.as_mut(), &mut data, &test, log)
}

/// The loop of [`train_with`] on a trainer the caller built (the examples build theirs from
/// parts): evaluate greedily before training (rank 0), train `run.steps` steps of
/// `run.prompts_per_step` prompts, evaluate every `run.eval_every` steps and at the end (each
/// evaluation's responses in `run.out/eval/step-NNNNNN.jsonl`), save a checkpoint under
/// `run.out/checkpoints` every `run.save_every` steps and at the end (keeping the newest
/// `run.keep_last`), and draw the metrics file to `curves.svg`. `log` receives one line per step
/// and evaluation, and a summary.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use rl_zero::run::{Drive, RunSettings, addition_prompts, load_model, policy};
/// use rl_zero::trainer::{PromptDataset, Recipe};
///
/// let run = RunSettings { steps: 2, out: "runs/mine".into(), ..RunSettings::default() };
/// let loaded = load_model(None, "main")?; // the embedded tiny model
/// let (train, test) = addition_prompts(&loaded, 0, run.eval_prompts)?;
/// let recipe = Recipe::dr_grpo();
/// let mut trainer =
///     recipe.grpo(policy(loaded.model, loaded.tokenizer), rl_zero::reward::OrzReward::default())?;
/// let mut data = PromptDataset::new(train, 0, true)?;
/// let outcome = Drive::new(&run).run(&mut trainer, &mut data, &test, &mut |l| println!("{l}"))?;
/// println!("last checkpoint {}", outcome.checkpoint.display());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Drive<'a> {
    /// Steps, prompts per step, evaluation and checkpoint cadence, output directory.
    pub run: &'a RunSettings,
    /// The metrics file to draw at the end (`curves.svg` next to it); `None`: no curves.
    pub metrics: Option<&'a Path>,
    /// This process evaluates, saves checkpoints and draws curves: a single process, or rank 0
    /// of a data-parallel group (the other ranks only train).
    pub main_rank: bool,
    /// The step the trainer was resumed at (0 for a fresh run), reported in the outcome.
    pub resumed_from: u64,
}

impl<'a> Drive<'a> {
    /// A single-process run of `run` without curves.
    pub fn new(run: &'a RunSettings) -> Self {
        Self { run, metrics: None, main_rank: true, resumed_from: 0 }
    }

    /// Trains `trainer` on prompts from `data` (a [`PromptDataset`], or any
    /// [`rl_core::data::PromptSource`] of your own) to `run.steps`, evaluating on `test` (see
    /// [`Drive`]).
    ///
    /// # Errors
    /// A failed step, evaluation, evaluation file or checkpoint (naming the path).
    pub fn run(
        self,
        trainer: &mut dyn TrainStep,
        data: &mut dyn rl_core::data::PromptSource,
        test: &[Prompt],
        log: &mut dyn FnMut(&str),
    ) -> Result<TrainOutcome> {
        let Self { run, metrics, main_rank, resumed_from } = self;
        let root = run.out.join("checkpoints");
        let started = std::time::Instant::now();
        let mut curve = Vec::new();
        let split = match run.eval_split {
            EvalSplit::Test => "held-out",
            EvalSplit::Validation => "validation",
        };
        let mut evaluate = |t: &mut dyn TrainStep, log: &mut dyn FnMut(&str)| -> Result<()> {
            let step = t.state().step;
            let report = t.evaluate(test, true)?;
            // Every greedy response of this evaluation, for reading what the model answers.
            let dir = run.out.join("eval");
            let responses = dir.join(format!("step-{step:06}.jsonl"));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            report.write_jsonl(&responses)?;
            log(&format!(
                "eval step {step:>4}: greedy accuracy {:.3} (mean reward {:.3}, {} {split} prompts; {})",
                report.accuracy,
                report.mean_reward,
                report.responses,
                responses.display()
            ));
            curve.push(EvalPoint { step, report });
            Ok(())
        };
        let save = |t: &dyn TrainStep, log: &mut dyn FnMut(&str)| -> Result<PathBuf> {
            let dir = t
                .save_checkpoint(&root)
                .with_context(|| format!("saving a checkpoint under {}", root.display()))?;
            if let Some(keep) = run.keep_last {
                for old in checkpoint::prune(&root, keep)? {
                    log(&format!("keep_last = {keep}: deleted {}", old.display()));
                }
            }
            Ok(dir)
        };
        if main_rank {
            evaluate(trainer, log)?;
        }
        let mut checkpoint = None;
        while (trainer.state().step as usize) < run.steps {
            let report = trainer.step_from(data, run.prompts_per_step)?;
            let m = &report.metrics;
            log(&format!(
                "train step {:>4}: reward {:.3}, response length {:.1}, {:.2} s",
                report.step,
                m.get("reward/mean").unwrap_or(f64::NAN),
                m.get("response/length_mean").unwrap_or(f64::NAN),
                m.get("time/step_s").unwrap_or(f64::NAN),
            ));
            let step = report.step as usize;
            let last = step >= run.steps;
            if !main_rank {
                continue;
            }
            if last || (run.eval_every > 0 && step.is_multiple_of(run.eval_every)) {
                evaluate(trainer, log)?;
            }
            if last || (run.save_every > 0 && step.is_multiple_of(run.save_every)) {
                checkpoint = Some(save(&*trainer, log)?);
            }
        }
        if !main_rank {
            // Rank 0 saves the checkpoints and draws the curves.
            return Ok(TrainOutcome { curve, resumed_from, checkpoint: root, curves: None });
        }
        let checkpoint = match checkpoint {
            Some(c) => c,
            // Nothing left to train (resumed at or past `steps`): the latest checkpoint, or a new one.
            None => match checkpoint::latest(&root)? {
                Some(c) => c,
                None => save(&*trainer, log)?,
            },
        };
        log(&format!("checkpoint {}", checkpoint.display()));
        // The run itself succeeded: a plot that cannot be drawn is logged, not an error.
        let curves = metrics.and_then(|m| match rl_trainer::plot::plot_run(m) {
            Ok(svg) => {
                log(&format!("curves {}", svg.display()));
                Some(svg)
            }
            Err(e) => {
                log(&format!("no curves: {e}"));
                None
            }
        });
        if let (Some(first), Some(last)) = (curve.first(), curve.last()) {
            log(&format!(
                "{split} greedy accuracy {:.3} (step {}) -> {:.3} (step {}) in {:.0} s",
                first.report.accuracy,
                first.step,
                last.report.accuracy,
                last.step,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(TrainOutcome { curve, resumed_from, checkpoint, curves })
    }
}

/// Sets the model's `run.compute_dtype` and `run.sample_dtype`.
fn set_precision(model: &mut LanguageModel, run: &RunSettings) -> Result<()> {
    model.set_compute_dtype(run.compute_dtype)?;
    model.set_sample_compute_dtype(run.sample_dtype)?;
    Ok(())
}

/// Greedy accuracy of `model` (see [`load_for_eval`]: a model or a checkpoint of a run on
/// `file.run.model`) on `file.run.eval_prompts` held-out prompts of `file.run.dataset`, scored
/// with `file.run.reward` and sampled with `file.trainer.sampling` (temperature 0).
pub fn eval(file: &RunFile, model: Option<&str>) -> Result<EvalReport> {
    file.validate()?;
    let run = &file.run;
    let mut loaded = load_for_eval(model, run.model.as_deref(), &run.revision)?;
    set_precision(&mut loaded.model, run)?;
    let seed = file.trainer.seed;
    let (_, test) = prompts(&loaded, run, seed)?;
    let mut policy = policy(loaded.model, loaded.tokenizer);
    let sampling = rl_trainer::eval::eval_sampling(&file.trainer, 0, true);
    Ok(rl_trainer::evaluate(
        &mut policy,
        &file.run.reward,
        &test,
        &sampling,
        file.trainer.accuracy_threshold,
    )?)
}
