//! The recipe files under `recipes/` and the `train` / `eval` commands (through `rl_zero::run`).

use std::path::PathBuf;

use rl_zero::run::{self, RunFile};
use rl_zero::trainer::{AlgorithmConfig, Recipe, TrainerConfig};

fn recipe_path(name: &str) -> PathBuf {
    run::workspace_root().join("recipes").join(format!("{name}.toml"))
}

fn presets() -> Vec<(&'static str, Recipe)> {
    vec![
        ("open_reasoner_zero", Recipe::open_reasoner_zero()),
        ("dr_grpo", Recipe::dr_grpo()),
        ("grpo", Recipe { trainer: TrainerConfig::default(), algorithm: AlgorithmConfig::grpo() }),
        ("dapo", Recipe::dapo()),
    ]
}

#[test]
fn every_recipe_file_equals_its_preset() {
    for (name, preset) in presets() {
        let path = recipe_path(name);
        let parsed = Recipe::from_toml_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed, preset, "{name}.toml differs from its preset");
        // The CLI reads the same file as a run file with default `[run]` settings.
        let file = RunFile::from_toml_file(&path).unwrap();
        assert_eq!(file.recipe(), preset, "{name}");
        assert_eq!(file.run, run::RunSettings::default(), "{name}");
    }
}

#[test]
fn every_recipe_directory_entry_is_tested() {
    let mut names: Vec<String> = std::fs::read_dir(run::workspace_root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut known: Vec<String> = presets().iter().map(|(n, _)| n.to_string()).collect();
    known.push("smollm2_addition".into());
    known.push("smollm2_addition_constant".into());
    known.push("smollm2_arithmetic".into());
    known.push("smollm2_arithmetic_constant".into());
    known.sort();
    assert_eq!(names, known);
}

#[test]
fn a_typo_fails_naming_the_field_and_the_valid_names() {
    let text = std::fs::read_to_string(recipe_path("dr_grpo")).unwrap();
    let typo = text.replacen("ppo_epochs = 1", "ppo_epoch = 1", 1);
    assert_ne!(typo, text);
    let err = format!("{:#}", RunFile::from_toml(&typo).unwrap_err());
    assert!(err.contains("ppo_epoch") && err.contains("`ppo_epochs`"), "{err}");
    let err = Recipe::from_toml(&typo).unwrap_err().to_string();
    assert!(err.contains("ppo_epoch"), "{err}");

    let err = format!("{:#}", RunFile::from_toml("[run]\nprompts_per_stp = 4\n").unwrap_err());
    assert!(err.contains("prompts_per_stp") && err.contains("`prompts_per_step`"), "{err}");
    let err = format!("{:#}", RunFile::from_toml("[rn]\nsteps = 4\n").unwrap_err());
    assert!(err.contains("rn") && err.contains("`run`"), "{err}");
    let err = format!("{:#}", RunFile::from_toml("[run.reward]\ntype = \"orzz\"\n").unwrap_err());
    assert!(err.contains("orzz"), "{err}");
}

#[test]
fn invalid_run_settings_are_errors() {
    let err = format!("{:#}", RunFile::from_toml("[run]\nprompts_per_step = 0\n").unwrap_err());
    assert!(err.contains("run.prompts_per_step"), "{err}");
    let err = format!("{:#}", RunFile::from_toml("[trainer.actor]\nlr = -1.0\n").unwrap_err());
    assert!(err.contains("actor.lr"), "{err}");
    // One route to the entropy bonus: the term or its shorthand, not both.
    let both = "[trainer]\nentropy_coef = 0.01\n[algorithm.entropy_bonus]\ncoef = 0.01\n";
    let err = format!("{:#}", RunFile::from_toml(both).unwrap_err());
    assert!(err.contains("algorithm.entropy_bonus") && err.contains("not both"), "{err}");
}

/// Tiny sizes for the embedded model: 4 prompts × 4 samples, 16 new tokens, 8 eval prompts.
fn tiny_run(recipe: &str, out: PathBuf, steps: usize) -> RunFile {
    let mut f = RunFile::from_toml_file(recipe_path(recipe)).unwrap();
    let t = &mut f.trainer;
    t.sampling.n = 4;
    t.sampling.max_new_tokens = 16;
    t.micro_batch_size = 16;
    t.actor.lr = 1e-4;
    if let Some(ds) = &mut t.dynamic_sampling {
        ds.on_shortfall = rl_zero::trainer::Shortfall::Train;
    }
    f.algorithm.policy_loss = match recipe {
        "dr_grpo" => rl_zero::loss::PolicyLossConfig::dr_grpo(16),
        _ => f.algorithm.policy_loss.clone(),
    };
    f.run.steps = steps;
    f.run.prompts_per_step = 4;
    f.run.eval_prompts = 8;
    f.run.eval_every = 1;
    f.run.out = out;
    f
}

#[test]
fn train_two_steps_then_eval_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny_run("dr_grpo", dir.path().join("run"), 2);
    let mut lines = Vec::new();
    let out = run::train(&file, false, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(out.resumed_from, 0);
    let steps: Vec<u64> = out.curve.iter().map(|p| p.step).collect();
    assert_eq!(steps, [0, 1, 2]);
    assert!(out.curve.iter().all(|p| p.report.responses == 8 && p.report.accuracy.is_finite()));
    assert!(out.checkpoint.ends_with("step-000002"), "{}", out.checkpoint.display());
    assert_eq!(lines.iter().filter(|l| l.starts_with("train step")).count(), 2);
    let metrics = std::fs::read_to_string(file.run.out.join("metrics.jsonl")).unwrap();
    // One line per training step, one per evaluation (steps 0, 1, 2).
    assert_eq!(metrics.lines().filter(|l| l.contains("\"reward/mean\"")).count(), 2);
    assert_eq!(metrics.lines().filter(|l| l.contains("\"eval/accuracy\"")).count(), 3);
    assert_eq!(metrics.lines().count(), 5);
    // The curves are drawn next to the metrics, and the log says where.
    let curves = file.run.out.join("curves.svg");
    assert_eq!(out.curves.as_deref(), Some(curves.as_path()));
    assert!(std::fs::read_to_string(&curves).unwrap().contains("held-out accuracy (greedy)"));
    assert!(lines.iter().any(|l| l == &format!("curves {}", curves.display())), "{lines:?}");
    // The written run file reproduces the run.
    assert_eq!(RunFile::from_toml_file(file.run.out.join("run.toml")).unwrap(), file);

    // Training changed the weights, so evaluating the checkpoint below tests that it is loaded.
    let load = |p: PathBuf| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    let trained = load(out.checkpoint.join("policy/model.safetensors"));
    let base = load(run::tiny_model_dir().join("model.safetensors"));
    let changed = trained.iter().any(|(k, t)| {
        let b = &base[k];
        let d = (t - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() > 0.0
    });
    assert!(changed, "two steps at lr 1e-4 must move the weights");

    // Greedy evaluation is deterministic: the checkpoint scores what the trained policy scored,
    // whether named by its step directory, its policy directory or the checkpoint root.
    let last = &out.curve[2].report;
    for m in
        [out.checkpoint.clone(), out.checkpoint.join("policy"), file.run.out.join("checkpoints")]
    {
        let r = run::eval(&file, Some(m.to_str().unwrap())).unwrap();
        assert_eq!(r.responses, 8);
        assert_eq!(
            (r.accuracy, r.mean_reward),
            (last.accuracy, last.mean_reward),
            "{}",
            m.display()
        );
    }
    // The base model scores what training saw before its first step.
    let base = run::eval(&file, None).unwrap();
    assert_eq!(base.accuracy, out.curve[0].report.accuracy);
}

#[test]
fn ppo_recipe_trains_with_a_critic_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("ppo");
    let first = run::train(&tiny_run("open_reasoner_zero", out_dir.clone(), 1), false, &mut |_| {})
        .unwrap();
    assert!(first.checkpoint.join("critic").is_dir(), "PPO checkpoints hold the critic");
    let file = tiny_run("open_reasoner_zero", out_dir, 2);
    let second = run::train(&file, true, &mut |_| {}).unwrap();
    assert_eq!(second.resumed_from, 1);
    let steps: Vec<u64> = second.curve.iter().map(|p| p.step).collect();
    assert_eq!(steps, [1, 2]);
    // The resumed run starts from the first run's final policy.
    assert_eq!(second.curve[0].report, first.curve[1].report);
    assert!(second.checkpoint.ends_with("step-000002"));
}

#[test]
fn eval_rejects_a_missing_model() {
    let file = RunFile::default();
    assert!(run::eval(&file, Some("/nonexistent/dir/model.gguf")).is_err());
}

#[test]
fn datasets_are_split_and_written_for_the_model() {
    let loaded = run::load_model(None, "main").unwrap();
    let bos = loaded.tokenizer.bos_token().unwrap().to_string();
    let mut settings = run::RunSettings { eval_prompts: 7, ..Default::default() };
    let (train, test) = run::prompts(&loaded, &settings, 0).unwrap();
    assert_eq!(test.len(), 7);
    assert!(train.len() > 7000, "{}", train.len());
    assert!(test.iter().all(|t| !train.iter().any(|p| p.text == t.text)), "held-out leak");

    // The validation split comes out of the training prompts: disjoint from both the rest of
    // training and the held-out prompts, spread over the range, and seeded.
    let full_train = train.len();
    settings.eval_split = run::EvalSplit::Validation;
    let (vtrain, val) = run::prompts(&loaded, &settings, 0).unwrap();
    assert_eq!((vtrain.len(), val.len()), (full_train - 7, 7));
    assert!(val.iter().all(|v| !vtrain.iter().any(|p| p.text == v.text)), "validation leak");
    assert!(val.iter().all(|v| !test.iter().any(|t| t.text == v.text)), "validation = held-out");
    assert_ne!(val[0].answer, val[6].answer, "validation is not one corner of the range");
    let (_, val3) = run::prompts(&loaded, &settings, 3).unwrap();
    assert_ne!(val, val3, "the seed moves the validation split");
    settings.eval_split = run::EvalSplit::Test;

    settings.dataset = run::Dataset::Arithmetic { level: 1 };
    let (train, test) = run::prompts(&loaded, &settings, 0).unwrap();
    assert!(train.len() > 4080 && test.len() == 7, "{} {}", train.len(), test.len());
    assert!(test.iter().all(|t| !train.iter().any(|p| p.text == t.text)), "held-out leak");
    // The harder levels: `arithmetic:3` in a run file, disjoint splits, errors name the field.
    let f = RunFile::from_toml("[run]\ndataset = \"arithmetic:3\"\neval_prompts = 50\n").unwrap();
    assert_eq!(f.run.dataset, run::Dataset::Arithmetic { level: 3 });
    assert!(f.to_toml().unwrap().contains("dataset = \"arithmetic:3\""));
    let (train3, test3) = run::prompts(&loaded, &f.run, 0).unwrap();
    assert_eq!(test3.len(), 50);
    assert!(test3.iter().all(|t| !train3.iter().any(|p| p.text == t.text)), "held-out leak");
    assert!(test3[0].text.contains(r" \times "), "{}", test3[0].text);
    let err = format!("{:#}", RunFile::from_toml("[run]\ndataset = \"arithmetic:7\"").unwrap_err());
    assert!(err.contains("run.dataset") && err.contains("level"), "{err}");
    assert!(train.iter().chain(&test).all(|p| p.text.starts_with(&bos) && p.answer.is_some()));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"prompt": "What is {i} + 1?", "answer": {}}}"#, i + 1))
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    settings.dataset = run::Dataset::Jsonl(path.clone());
    settings.eval_prompts = 2;
    let (train, test) = run::prompts(&loaded, &settings, 0).unwrap();
    assert_eq!((train.len(), test.len()), (3, 2));
    assert_eq!(test[1].text, format!("{bos}What is 4 + 1?"));
    assert_eq!(test[1].answer.as_deref(), Some("5"));
    settings.eval_prompts = 5;
    let err = format!("{:#}", run::prompts(&loaded, &settings, 0).unwrap_err());
    assert!(err.contains("run.eval_prompts"), "{err}");
}

#[test]
fn a_question_template_wraps_every_question_and_is_checked() {
    let loaded = run::load_model(None, "main").unwrap();
    let bos = loaded.tokenizer.bos_token().unwrap().to_string();
    let plain = run::RunSettings { eval_prompts: 5, ..Default::default() };
    let (train, test) = run::prompts(&loaded, &plain, 0).unwrap();
    let f = RunFile::from_toml(
        "[run]\neval_prompts = 5\nquestion_template = \"{question} Add the ones first.\"",
    )
    .unwrap();
    f.validate().unwrap();
    assert!(f.to_toml().unwrap().contains("question_template = "));
    let (ttrain, ttest) = run::prompts(&loaded, &f.run, 0).unwrap();
    assert_eq!((ttrain.len(), ttest.len()), (train.len(), test.len()));
    for (p, t) in train.iter().zip(&ttrain).chain(test.iter().zip(&ttest)) {
        assert_eq!(t.text, format!("{} Add the ones first.", p.text), "{bos}");
        assert_eq!(t.answer, p.answer);
    }
    // Templates of other datasets too (arithmetic, then validation split).
    let mut s = f.run.clone();
    s.dataset = run::Dataset::Arithmetic { level: 1 };
    s.eval_split = run::EvalSplit::Validation;
    let (a, v) = run::prompts(&loaded, &s, 0).unwrap();
    assert!(
        a.iter()
            .chain(&v)
            .all(|p| p.text.starts_with(&bos) && p.text.ends_with(" Add the ones first."))
    );
    for bad in ["no placeholder", "{question} twice {question}"] {
        let err = RunFile::from_toml(&format!("[run]\nquestion_template = {bad:?}")).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("run.question_template") && err.contains("{question}"), "{err}");
    }
    let long = format!("{{question}}{}", "x".repeat(5000));
    let err = RunFile::from_toml(&format!("[run]\nquestion_template = {long:?}")).unwrap_err();
    assert!(format!("{err:#}").contains("at most 4096"), "{err:#}");
    // A changed template is a changed recipe: `--resume` refuses it.
    let changes = run::config_changes(&RunFile::default(), &f).unwrap();
    assert!(
        changes.iter().any(|c| c.starts_with("run.question_template: absent ->")),
        "{changes:?}"
    );
}

#[test]
fn tiny_run_files_keep_their_presets_algorithms() {
    let dir = run::workspace_root().join("recipes/tiny");
    let dr = RunFile::from_toml_file(dir.join("dr_grpo.toml")).unwrap();
    let preset = Recipe::dr_grpo().algorithm;
    assert_eq!(dr.algorithm.advantage, preset.advantage);
    let budget = dr.trainer.sampling.max_new_tokens;
    // The run file leaves Dr. GRPO's constant unset; it resolves to the generation budget.
    let mut resolved = dr.algorithm.clone();
    resolved.resolve(&dr.trainer);
    assert_eq!(resolved.policy_loss, rl_zero::loss::PolicyLossConfig::dr_grpo(budget));
    assert_eq!(dr.trainer.actor.adam, Recipe::dr_grpo().trainer.actor.adam);
    assert_eq!(dr.run.model, None);

    let ppo = RunFile::from_toml_file(dir.join("ppo_gae.toml")).unwrap();
    assert_eq!(ppo.algorithm, Recipe::open_reasoner_zero().algorithm);
    assert_eq!(ppo.trainer.critic.adam, Recipe::open_reasoner_zero().trainer.critic.adam);
    assert_eq!(ppo.run.model, None);
}

/// The embedded model by its path (`--model assets/tiny-arith`: no chat template, so `<bos>` +
/// question, as without `--model`), and from the copy compiled into the binary when the source
/// tree's `assets/` is gone (an installed binary): the same files, loadable, reused.
#[test]
fn the_embedded_model_works_by_path_and_without_the_source_tree() {
    let by_path = run::tiny_model_dir().to_string_lossy().into_owned();
    let loaded = run::load_model(Some(&by_path), "main").unwrap();
    let settings = run::RunSettings { eval_prompts: 3, ..Default::default() };
    let (_, test) = run::prompts(&loaded, &settings, 0).unwrap();
    assert!(test[0].text.starts_with("<bos>What is "), "{}", test[0].text);

    let parent = tempfile::tempdir().unwrap();
    let dir = run::embedded_tiny_model_dir(parent.path()).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let copy = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(copy, std::fs::read(run::tiny_model_dir().join(name)).unwrap(), "{name}");
    }
    assert_eq!(run::embedded_tiny_model_dir(parent.path()).unwrap(), dir, "reused");
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1, "no leftovers");
    run::load_model(Some(dir.to_str().unwrap()), "main").unwrap();
}

/// The engine run files under `recipes/engines/` parse, validate and select their engine and a
/// disk weight sync; `rl-zero export` writes a directory an engine (and rl-zero) loads with the
/// same weights, and refuses a non-empty one.
#[test]
fn engine_run_files_select_an_engine_and_export_writes_a_loadable_model() {
    let dir = run::workspace_root().join("recipes/engines");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let f =
            RunFile::from_toml_file(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(f.rollout.engine().is_some(), "{}", path.display());
        assert!(matches!(f.weight_sync, rl_zero::rollout::WeightSyncConfig::Disk(_)));
        n += 1;
    }
    assert!(n > 0);

    let out = tempfile::tempdir().unwrap();
    let hf = out.path().join("tiny-hf");
    run::export_model(None, "main", &hf, rl_zero::core::DType::F32).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        assert!(hf.join(name).is_file(), "{name}");
    }
    let a = run::load_model(None, "main").unwrap();
    let b = run::load_model(Some(hf.to_str().unwrap()), "main").unwrap();
    let (wa, wb) = (a.model.named_vars(), b.model.named_vars());
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let d = (va.as_tensor() - vb.as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{na}");
    }
    let err = format!(
        "{:#}",
        run::export_model(None, "main", &hf, rl_zero::core::DType::F32).unwrap_err()
    );
    assert!(err.contains("not empty"), "{err}");
}

/// `recipes/smollm2_addition.toml` and `recipes/smollm2_addition_constant.toml` (the real-model
/// runs of docs/results.md) are Dr. GRPO with the tuned sampling and learning rate, on the SmolLM2
/// GGUF, evaluated on the held-out split; the first adds a cosine decay over its whole run and
/// DAPO dynamic sampling, and differs from the second in nothing else.
#[test]
fn the_smollm2_addition_recipes_are_dr_grpo_on_the_held_out_split() {
    let f = RunFile::from_toml_file(recipe_path("smollm2_addition")).unwrap();
    let constant = RunFile::from_toml_file(recipe_path("smollm2_addition_constant")).unwrap();
    for f in [&f, &constant] {
        let mut algo = f.algorithm.clone();
        algo.resolve(&f.trainer);
        let mut dr = Recipe::dr_grpo().algorithm;
        dr.resolve(&f.trainer);
        assert_eq!(algo, dr, "the Dr. GRPO stages, constant = max_new_tokens");
        assert_eq!(f.run.model.as_deref(), Some(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(f.run.eval_split, run::EvalSplit::Test);
        assert_eq!((f.trainer.sampling.temperature, f.trainer.actor.lr), (0.7, 2e-5));
    }
    assert_eq!(constant.trainer.actor.schedule, rl_zero::trainer::LrSchedule::Constant);
    assert_eq!(
        f.trainer.actor.schedule,
        rl_zero::trainer::LrSchedule::WarmupCosine {
            warmup_steps: 0,
            total_steps: f.run.steps,
            min_lr_ratio: 0.1
        },
        "the decay spans the run"
    );
    let ds = f.trainer.dynamic_sampling.clone().expect("dynamic sampling");
    assert_eq!((ds.max_rounds, ds.on_shortfall), (4, rl_zero::trainer::Shortfall::Train));
    let mut same = f.clone();
    same.trainer.actor.schedule = rl_zero::trainer::LrSchedule::Constant;
    same.trainer.dynamic_sampling = None;
    same.run = run::RunSettings { steps: 40, eval_every: 5, ..f.run.clone() };
    assert_eq!(same, constant, "only the schedule, dynamic sampling and run length differ");
}

/// `recipes/smollm2_arithmetic.toml` (the harder task of docs/results.md) is the addition
/// recipe with only the task (and the output) changed, and
/// `recipes/smollm2_arithmetic_constant.toml` the constant-rate one.
#[test]
fn the_smollm2_arithmetic_recipes_change_only_the_task() {
    for (addition, arithmetic) in [
        ("smollm2_addition", "smollm2_arithmetic"),
        ("smollm2_addition_constant", "smollm2_arithmetic_constant"),
    ] {
        let add = RunFile::from_toml_file(recipe_path(addition)).unwrap();
        let hard = RunFile::from_toml_file(recipe_path(arithmetic)).unwrap();
        assert_eq!(hard.recipe(), add.recipe(), "{arithmetic}");
        assert_eq!(hard.run.dataset, "arithmetic:1".parse().unwrap());
        assert_ne!(hard.run.out, add.run.out, "{arithmetic}");
        let same = run::RunSettings {
            dataset: add.run.dataset.clone(),
            out: add.run.out.clone(),
            ..hard.run.clone()
        };
        assert_eq!(same, add.run, "{arithmetic}");
    }
}

/// `run.compute_dtype = "bf16"` trains and evaluates with bf16 products: the run file says so
/// in the saved `run.toml`, the steps' numbers differ from the f32 run's (the setting reaches the
/// model) while staying finite, and `eval` on the run file uses it too. With `run.sample_dtype =
/// "f32"` beside it, the first step's rollouts are the f32 run's (same weights, seed and sampler
/// products) while its update is not (bf16 training products).
#[test]
fn compute_dtype_bf16_reaches_training_and_evaluation() {
    let mut outcomes = Vec::new();
    for (dtype, sample) in [("f32", None), ("bf16", None), ("bf16", Some("f32"))] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let text = std::fs::read_to_string(recipe_path("tiny/dr_grpo")).unwrap();
        let mut file = RunFile::from_toml(&text).unwrap();
        file.run.steps = 2;
        file.run.prompts_per_step = 4;
        file.run.eval_prompts = 8;
        file.run.eval_every = 0;
        file.run.out = out.clone();
        file.run.compute_dtype = serde_json::from_value(serde_json::json!(dtype)).unwrap();
        file.run.sample_dtype =
            sample.map(|s| serde_json::from_value(serde_json::json!(s)).unwrap());
        let saved = file.to_toml().unwrap();
        assert_eq!(saved.contains("compute_dtype = \"bf16\""), dtype == "bf16", "{saved}");
        assert_eq!(saved.contains("sample_dtype = \"f32\""), sample.is_some(), "{saved}");
        assert_eq!(RunFile::from_toml(&saved).unwrap(), file);
        let outcome = run::train(&file, false, &mut |_| {}).unwrap();
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let steps: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("actor/grad_norm").is_some())
            .collect();
        let losses: Vec<f64> =
            steps.iter().map(|v| v["actor/grad_norm"].as_f64().unwrap()).collect();
        assert_eq!(losses.len(), 2, "{dtype}: {metrics}");
        assert!(losses.iter().all(|l| l.is_finite()), "{dtype}: {losses:?}");
        let first_rollouts =
            ["response/length_mean", "reward/mean"].map(|k| steps[0][k].as_f64().unwrap());
        let last = outcome.curve.last().unwrap().report.clone();
        let again = run::eval(&file, Some(outcome.checkpoint.to_str().unwrap())).unwrap();
        assert_eq!(again.accuracy, last.accuracy, "{dtype}: eval of the checkpoint");
        let mismatch = steps[0]["rollout/log_prob_abs_diff"].as_f64().unwrap();
        outcomes.push((losses, first_rollouts, mismatch, last.samples));
    }
    assert_ne!(outcomes[0].0, outcomes[1].0, "bf16 products give the same losses as f32");
    assert_eq!(outcomes[2].1, outcomes[0].1, "f32 sampling: the f32 run's first rollouts");
    assert_ne!(outcomes[2].0[0], outcomes[0].0[0], "bf16 training products: another update");
    // The sampler (f32) and the trainer (bf16) disagree by bf16's rounding, the all-f32 run not.
    let (f32_diff, mixed_diff) = (outcomes[0].2, outcomes[2].2);
    assert!(mixed_diff > 1e-4 && f32_diff < 1e-5, "{f32_diff} vs {mixed_diff}");
}
