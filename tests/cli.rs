//! The `rl-zero` binary as a user runs it: refusing to mix runs in one output directory,
//! failed runs that leave the disk as it was, resume against the saved run file, checkpoint
//! retention, `score`'s output safety and finish-reason spellings, local model paths, and
//! validation before anything is written. Every run is the embedded tiny model, 1-3 steps of
//! 2 prompts × 2 samples.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A run file sized for a test: `steps` steps of 2 prompts × 2 samples, 8 new tokens, 4 eval
/// prompts, `extra_run` appended to `[run]`, `estimator` as the advantage.
fn run_file(dir: &Path, name: &str, estimator: &str, extra_run: &str, lr: &str) -> PathBuf {
    let text = format!(
        "[run]\nsteps = 1\nprompts_per_step = 2\neval_prompts = 4\neval_every = 0\n{extra_run}\n\
         [trainer]\nmicro_batch_size = 8\n[trainer.sampling]\nn = 2\nmax_new_tokens = 8\n\
         [trainer.actor]\nlr = {lr}\n\
         [algorithm.advantage]\ntype = \"{estimator}\"\n[algorithm.policy_loss]\ntype = \"ppo\"\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn rlz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rl-zero"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run rl-zero")
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "rl-zero failed:\n{out}\n{err}");
    out.into_owned()
}

fn fails(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success(), "rl-zero should have failed:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "a panic, not an error:\n{err}");
    err.into_owned()
}

/// Every file under `dir` with its bytes (directories as empty entries).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_dir() {
                all.insert(rel, Vec::new());
                todo.push(p);
            } else {
                all.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    all
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    names
}

#[test]
fn train_refuses_a_non_empty_out_dir_and_overwrite_replaces_only_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_file(dir.path(), "run.toml", "dr_grpo", "", "1e-4");
    let out = dir.path().join("out");
    ok(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--steps", "2"]));
    assert_eq!(checkpoints(&out), ["step-000002"]);
    let before = snapshot(&out);

    // Again without --resume: refused, naming the directory and both ways forward.
    let err = fails(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--steps", "1"]));
    assert!(err.contains(s(&out)) && err.contains("not empty"), "{err}");
    assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(snapshot(&out), before, "a refused run changed the output directory");

    // --overwrite: the run's files are replaced, a file of the user's is kept.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let log =
        ok(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--steps", "1", "--overwrite"]));
    assert!(log.contains("--overwrite: deleted"), "{log}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    assert_eq!(checkpoints(&out), ["step-000001"], "the old run's step-000002 must be gone");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    // One training step and two evaluations (before and after): nothing of the 2-step run.
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    assert!(!metrics.contains("\"step\":2"), "{metrics}");
    // Each evaluation's responses, one line per eval prompt, their rewards giving the accuracy
    // logged for that step; the 2-step run's step-000002 file is gone with the rest.
    let mut evals: Vec<String> = std::fs::read_dir(out.join("eval"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    evals.sort();
    assert_eq!(evals, ["step-000000.jsonl", "step-000001.jsonl"]);
    for (step, file) in evals.iter().enumerate() {
        let text = std::fs::read_to_string(out.join("eval").join(file)).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4, "{text}");
        let correct = lines.iter().filter(|l| l["reward"].as_f64().unwrap() > 0.0).count();
        let logged: serde_json::Value = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["step"] == step && l.get("eval/accuracy").is_some())
            .unwrap();
        assert_eq!(correct as f64 / 4.0, logged["eval/accuracy"].as_f64().unwrap(), "{text}");
        assert!(lines.iter().all(|l| l["prompt"].is_string() && l["answer"].is_string()), "{text}");
    }
    // `eval --responses` writes the same records for a checkpoint.
    let file = dir.path().join("responses.jsonl");
    let ckpt = out.join("checkpoints");
    let log =
        ok(&rlz(&["eval", "--config", s(&cfg), "--model", s(&ckpt), "--responses", s(&file)]));
    assert!(log.contains("responses.jsonl"), "{log}");
    let after = std::fs::read_to_string(out.join("eval/step-000001.jsonl")).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after, "eval of the final checkpoint");
    // --overwrite and --resume exclude each other.
    let err =
        fails(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--resume", "--overwrite"]));
    assert!(err.contains("--overwrite") || err.contains("cannot be used"), "{err}");
}

#[test]
fn a_failed_resume_changes_nothing_and_config_changes_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let dr = run_file(dir.path(), "dr.toml", "dr_grpo", "", "1e-4");
    let ppo = run_file(dir.path(), "ppo.toml", "gae", "", "1e-4");
    let fast = run_file(dir.path(), "fast.toml", "dr_grpo", "", "1e-2");
    let out = dir.path().join("out");
    ok(&rlz(&["train", "--config", s(&dr), "--out", s(&out)]));
    let before = snapshot(&out);

    // A different recipe: refused with the differing fields, run.toml untouched.
    let err = fails(&rlz(&["train", "--config", s(&ppo), "--out", s(&out), "--resume"]));
    assert!(err.contains("algorithm.advantage.type: \"dr_grpo\" -> \"gae\""), "{err}");
    assert!(err.contains("--allow-config-change"), "{err}");
    assert_eq!(snapshot(&out), before);
    // Allowed, but the Dr. GRPO checkpoint has no critic for GAE: refused before any write.
    let args = ["train", "--config", s(&ppo), "--out", s(&out), "--resume"];
    let err = fails(&rlz(&[&args[..], &["--allow-config-change"]].concat()));
    assert!(err.contains("step-000001") && err.contains("no critic"), "{err}");
    assert_eq!(snapshot(&out), before);
    // A missing model is named, and nothing is written.
    let args = ["train", "--config", s(&dr), "--out", s(&out), "--resume", "--allow-config-change"];
    let err = fails(&rlz(&[&args[..], &["--model", "/nonexistent/dir"]].concat()));
    assert!(err.contains("/nonexistent/dir") && err.contains("no such file"), "{err}");
    assert_eq!(snapshot(&out), before);
    // A changed learning rate: refused, then accepted and logged with --allow-config-change.
    let err = fails(&rlz(&["train", "--config", s(&fast), "--out", s(&out), "--resume"]));
    assert!(err.contains("trainer.actor.lr: 0.0001 -> 0.01"), "{err}");
    assert_eq!(snapshot(&out), before);
    let args = ["train", "--config", s(&fast), "--out", s(&out), "--resume", "--steps", "2"];
    let log = ok(&rlz(&[&args[..], &["--allow-config-change"]].concat()));
    assert!(log.contains("changed setting: trainer.actor.lr: 0.0001 -> 0.01"), "{log}");
    assert!(log.contains("resumed from step 1"), "{log}");
    let saved = std::fs::read_to_string(out.join("run.toml")).unwrap();
    assert!(saved.contains("lr = 0.01"), "{saved}");
    // The same run file (only `steps` differs) resumes without a flag.
    ok(&rlz(&["train", "--config", s(&fast), "--out", s(&out), "--resume", "--steps", "3"]));
    assert_eq!(checkpoints(&out), ["step-000001", "step-000002", "step-000003"]);
}

#[test]
fn keep_last_deletes_older_checkpoints_but_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_file(dir.path(), "r.toml", "dr_grpo", "save_every = 1\nkeep_last = 2", "1e-4");
    let out = dir.path().join("out");
    // A stale directory of an interrupted save is cleaned up too.
    std::fs::create_dir_all(out.join("checkpoints/.tmp-step-000009")).unwrap();
    let log =
        ok(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--steps", "3", "--resume"]));
    assert!(log.contains("keep_last = 2: deleted"), "{log}");
    assert_eq!(checkpoints(&out), ["step-000002", "step-000003"]);
    assert!(!out.join("checkpoints/.tmp-step-000009").exists());
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000003");

    let bad = run_file(dir.path(), "bad.toml", "dr_grpo", "keep_last = 0", "1e-4");
    let err = fails(&rlz(&["train", "--config", s(&bad), "--out", s(&dir.path().join("x"))]));
    assert!(err.contains("run.keep_last"), "{err}");
}

#[test]
fn invalid_settings_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let base =
        std::fs::read_to_string(run_file(dir.path(), "ok.toml", "grpo", "", "1e-4")).unwrap();
    let cases = [
        ("max_new_tokens = 8", "max_new_tokens = 0", "trainer.sampling.max_new_tokens"),
        ("n = 2", "n = 1", "trainer.sampling.n"),
        ("lr = 1e-4", "lr = -1e-4", "trainer.actor.lr"),
        ("prompts_per_step = 2", "prompts_per_step = 0", "run.prompts_per_step"),
        ("prompts_per_step = 2", "prompts_per_step = 100000000", "responses per step"),
        (
            "type = \"ppo\"\n",
            "type = \"ppo\"\n[algorithm.policy_loss.aggregation]\n\
             type = \"seq_mean_token_sum_norm\"\nmax_len = 0\n",
            "algorithm.policy_loss.aggregation.max_len",
        ),
    ];
    for (i, (from, to, field)) in cases.iter().enumerate() {
        assert!(base.contains(from), "{from}");
        let cfg = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&cfg, base.replacen(from, to, 1)).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let err = fails(&rlz(&["train", "--config", s(&cfg), "--out", s(&out)]));
        assert!(err.contains(field), "{field}: {err}");
        assert!(!out.exists(), "{field}: the refused run created {}", out.display());
    }
    // n = 1 names the group-relative estimator too.
    let cfg = dir.path().join("bad1.toml");
    let err = fails(&rlz(&["train", "--config", s(&cfg), "--out", s(&dir.path().join("o"))]));
    assert!(err.contains("`grpo`"), "{err}");
    // `--set` overrides are checked as the file is: each bad one is named, nothing is written.
    let good = run_file(dir.path(), "good.toml", "grpo", "", "1e-4");
    let sets = [
        ("trainer.sampling.n=1", "trainer.sampling.n"),
        ("run.stepz=3", "stepz"),
        ("run.steps=three", "run.steps=three"),
        ("run.steps.x=1", "`run.steps` is a value, not a table"),
        ("run.steps", "expected KEY=VALUE"),
        ("run..steps=1", "dotted path"),
        ("run.compute_dtype=f16", "f16"),
    ];
    for (i, (set, expect)) in sets.iter().enumerate() {
        let out = dir.path().join(format!("set{i}"));
        let err = fails(&rlz(&["train", "--config", s(&good), "--out", s(&out), "--set", set]));
        assert!(err.contains(expect), "{set}: {err}");
        assert!(!out.exists(), "{set}: the refused run created {}", out.display());
    }
}

/// `--set` reaches the run: the saved `run.toml` holds the overrides (a new table included), the
/// later of two overrides of one key wins, and `--resume` compares against the result.
#[test]
fn set_overrides_reach_the_saved_run_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_file(dir.path(), "r.toml", "dr_grpo", "", "1e-4");
    let out = dir.path().join("out");
    let sets = [
        "--set",
        "trainer.seed=7",
        "--set",
        "trainer.seed=4",
        "--set",
        "trainer.actor.lr=2e-4",
        "--set",
        "run.compute_dtype=bf16",
        "--set",
        "trainer.dynamic_sampling.max_rounds=3",
        "--set",
        "trainer.dynamic_sampling.on_shortfall=train",
    ];
    let mut args = vec!["train", "--config", s(&cfg), "--out", s(&out)];
    args.extend(sets);
    ok(&rlz(&args));
    let saved = std::fs::read_to_string(out.join("run.toml")).unwrap();
    for line in
        ["seed = 4", "lr = 0.0002", "compute_dtype = \"bf16\"", "[trainer.dynamic_sampling]"]
    {
        assert!(saved.contains(line), "{line}:\n{saved}");
    }
    assert!(saved.contains("max_rounds = 3") && saved.contains("on_shortfall = \"train\""));
    // Resuming with the same overrides matches the saved file; without them it does not.
    let resume = ["--resume", "--steps", "2"];
    let mut again = args.clone();
    again.extend(resume);
    ok(&rlz(&again));
    let err =
        fails(&rlz(&[&["train", "--config", s(&cfg), "--out", s(&out)][..], &resume].concat()));
    assert!(err.contains("trainer.seed"), "{err}");
}

#[test]
fn a_missing_local_model_is_named_and_never_sent_to_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_file(dir.path(), "r.toml", "dr_grpo", "", "1e-4");
    for model in ["/nonexistent/dir", "./x", "../y/z", "model.gguf", "gpt2"] {
        let out = dir.path().join("out");
        let err = fails(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--model", model]));
        assert!(err.contains(&format!("model {model}: no such file")), "{model}: {err}");
        assert!(!err.contains("huggingface.co") && !err.contains("hub"), "{model}: {err}");
        assert!(!out.exists(), "{model}");
        let err = fails(&rlz(&["eval", "--model", model]));
        assert!(err.contains(model) && !err.contains("huggingface.co"), "{model}: {err}");
    }
}

fn score_input(dir: &Path, lines: &[&str]) -> PathBuf {
    let p = dir.join("in.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn score_refuses_its_input_as_output_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"response": "\\boxed{4}", "answer": "4"}"#;
    let input = score_input(dir.path(), &[good, good]);
    let text = std::fs::read(&input).unwrap();
    // The same file, also under another spelling of its path.
    let other = dir.path().join(".").join("in.jsonl");
    for out in [&input, &other] {
        let err = fails(&rlz(&["score", "--input", s(&input), "--output", s(out)]));
        assert!(err.contains("is the input file"), "{err}");
        assert_eq!(std::fs::read(&input).unwrap(), text, "the input was changed");
    }
    // A bad second line: an error naming it, and no output file (nor a temporary one) left.
    let bad = score_input(dir.path(), &[good, "{\"response\": ", good]);
    let out = dir.path().join("scored.jsonl");
    let err = fails(&rlz(&["score", "--input", s(&bad), "--output", s(&out)]));
    assert!(err.contains("line 2"), "{err}");
    assert!(!out.exists(), "a partial output file was left");
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // An existing output survives a failed run unchanged, and is replaced by a good one.
    std::fs::write(&out, "previous").unwrap();
    fails(&rlz(&["score", "--input", s(&bad), "--output", s(&out)]));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous");
    let input = score_input(dir.path(), &[good, good]);
    ok(&rlz(&["score", "--input", s(&input), "--output", s(&out)]));
    let scored = std::fs::read_to_string(&out).unwrap();
    assert_eq!(scored.lines().count(), 2);
    assert!(scored.lines().all(|l| l.contains("\"correct\":true")), "{scored}");
}

#[test]
fn score_accepts_openai_and_vllm_finish_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let line = |finish: &str| format!(r#"{{"response": "\\boxed{{4}}", "answer": "4"{finish}}}"#);
    let lines = [
        line(r#", "finish": "stop""#),
        line(r#", "finish_reason": "stop""#),
        line(r#", "finish_reason": "eos""#),
        line(r#", "finish": "stop_string""#),
        line(r#", "finish_reason": "length""#),
        line(r#", "finish": "length""#),
        line(""),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = score_input(dir.path(), &refs);
    let o = rlz(&["score", "--input", s(&input), "--reward", r#"{"type": "orz"}"#]);
    let rewards: Vec<f64> = ok(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"].as_f64().unwrap())
        .collect();
    // Stopped by itself: correct-able (1); truncated by length: 0.
    assert_eq!(rewards, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]);

    for (bad, msg) in [
        (line(r#", "finish_reason": "done""#), "`finish_reason` must be"),
        (line(r#", "finish": "stop", "finish_reason": "length""#), "disagree"),
    ] {
        let input = score_input(dir.path(), &[&bad]);
        let err = fails(&rlz(&["score", "--input", s(&input), "--reward", r#"{"type": "orz"}"#]));
        assert!(err.contains("line 1") && err.contains(msg), "{err}");
    }
}

#[test]
fn errors_are_typed_and_print_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    // The library returns the refusal as a `RunError` a caller can match on.
    std::fs::write(dir.path().join("metrics.jsonl"), "{}\n").unwrap();
    let mut file = rl_zero::run::RunFile::default();
    file.run.out = dir.path().to_path_buf();
    let err = rl_zero::run::train(&file, false, &mut |_| {}).unwrap_err();
    match err.downcast_ref::<rl_zero::run::RunError>() {
        Some(rl_zero::run::RunError::OutDirNotEmpty { dir: d, entries, resumable: true }) => {
            assert_eq!(
                (d.as_path(), entries.as_slice()),
                (dir.path(), &["metrics.jsonl".into()][..])
            );
        }
        other => panic!("{other:?}: {err:#}"),
    }
    // `RUST_BACKTRACE=1` (set globally in many environments) adds no backtrace to a user error.
    let o = Command::new(env!("CARGO_BIN_EXE_rl-zero"))
        .args(["train", "--config", "/nonexistent/run.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot read /nonexistent/run.toml"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

#[test]
fn a_failed_checkpoint_save_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_file(dir.path(), "r.toml", "dr_grpo", "", "1e-4");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // `checkpoints` is a file: the save at the end of the run cannot create its directory.
    std::fs::write(out.join("checkpoints"), "").unwrap();
    let err = fails(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--resume"]));
    let root = out.join("checkpoints");
    assert!(err.contains(&format!("saving a checkpoint under {}", root.display())), "{err}");
}

/// `rl-zero launch` runs `train` as 2 data-parallel ranks: rank 0 alone writes the run files
/// (one metrics line per step and evaluation, one checkpoint), both ranks train and print with
/// their prefix; and a launched command that fails on a rank fails the launch.
#[test]
fn launch_trains_data_parallel_with_rank_0_owning_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = run_file(dir.path(), "dp.toml", "dr_grpo", "", "1e-3");
    let out = dir.path().join("out");
    let o = rlz(&[
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "train",
        "--config",
        s(&file),
        "--steps",
        "2",
        "--out",
        s(&out),
    ]);
    let stdout = ok(&o);
    assert!(stdout.contains("[rank 0] train step    2"), "{stdout}");
    assert!(stdout.contains("[rank 1] train step    2"), "{stdout}");
    assert!(!stdout.contains("[rank 1] eval"), "rank 1 does not evaluate:\n{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let train_lines = metrics.lines().filter(|l| l.contains("\"reward/mean\"")).count();
    assert_eq!(train_lines, 2, "one line per step, from rank 0 only:\n{metrics}");
    assert_eq!(checkpoints(&out), vec!["step-000002".to_string()]);
    // A failing command on the ranks fails the launch, naming a rank.
    let bad = rlz(&["launch", "--nproc-per-node", "2", "--", "train", "--config", "nope.toml"]);
    let err = fails(&bad);
    assert!(err.contains("rank"), "{err}");
}

/// A disk that fills up during a checkpoint (simulated with `ulimit -f`: a write past the limit
/// fails with EFBIG as on a full disk): the error names the checkpoint, the partial
/// `.tmp-step-*` directory is removed, and the previous checkpoint and `latest` are unchanged,
/// so `--resume` without the limit continues from it.
#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_file(dir.path(), "r.toml", "dr_grpo", "save_every = 1", "1e-4");
    let out = dir.path().join("out");
    ok(&rlz(&["train", "--config", s(&cfg), "--out", s(&out)]));
    let root = out.join("checkpoints");
    let before = snapshot(&root);
    assert_eq!(checkpoints(&out), ["step-000001"]);
    // 600 KiB per file: the policy (508 KiB) fits, the optimizer moments (1 MiB) do not.
    let limited = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 600; trap '' XFSZ; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_rl-zero"))
        .args(["train", "--config", s(&cfg), "--out", s(&out), "--resume", "--steps", "2"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = fails(&limited);
    assert!(err.contains(&root.join("step-000002").display().to_string()), "{err}");
    assert!(err.contains("File too large") || err.contains("too large"), "{err}");
    let after = snapshot(&root);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "no partial files; `latest` and step 1 kept");
    assert!(after == before, "the previous checkpoint's bytes changed");
    ok(&rlz(&["train", "--config", s(&cfg), "--out", s(&out), "--resume", "--steps", "2"]));
    assert_eq!(checkpoints(&out), ["step-000001", "step-000002"]);
}

/// `rl-zero eval` alone evaluates the embedded model with its recipe's settings (the run-file
/// default of 512 new tokens does not fit its context), and `--set` reaches `eval` too.
#[test]
fn eval_alone_runs_the_embedded_model() {
    let out = ok(&rlz(&["eval", "--prompts", "4"]));
    assert!(out.contains("greedy accuracy") && out.contains("4 held-out prompts"), "{out}");
    let err =
        fails(&rlz(&["eval", "--prompts", "4", "--set", "trainer.sampling.max_new_tokens=600"]));
    assert!(err.contains("max_new_tokens"), "{err}");
}

/// `rl-zero prompts` writes a run's splits as a JSONL dataset that `run.dataset` reads back:
/// the generated arithmetic task's splits come back the same, and the model is shown the same
/// held-out prompts either way (identical greedy responses).
#[test]
fn prompts_written_as_jsonl_are_the_same_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let split = |dataset: &str, split: &str, out: &Path| {
        let set = format!("run.dataset={dataset}");
        let set = ["--set", set.as_str(), "--set", "run.eval_prompts=4"];
        ok(&rlz(&[&["prompts", "--split", split, "--output", s(out)][..], &set].concat()));
        std::fs::read_to_string(out).unwrap()
    };
    let train = split("arithmetic", "train", &p("train.jsonl"));
    let eval = split("arithmetic", "eval", &p("eval.jsonl"));
    let lines = |t: &str| t.lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(lines(&eval).len(), 4);
    assert!(lines(&train).len() > 1000, "{}", lines(&train).len());
    for l in lines(&eval) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert!(v["prompt"].is_string() && v["answer"].is_string(), "{l}");
        assert!(!train.contains(v["prompt"].as_str().unwrap()), "held out: {l}");
    }
    // The training lines then the held-out ones: a JSONL dataset with the same splits.
    std::fs::write(p("all.jsonl"), format!("{train}{eval}")).unwrap();
    let all = s(&p("all.jsonl")).to_string();
    assert_eq!(split(&all, "train", &p("train2.jsonl")), train);
    assert_eq!(split(&all, "eval", &p("eval2.jsonl")), eval);
    let responses = |dataset: &str, out: &Path| {
        let set = format!("run.dataset={dataset}");
        ok(&rlz(&["eval", "--set", set.as_str(), "--prompts", "4", "--responses", s(out)]));
        std::fs::read_to_string(out).unwrap()
    };
    let a = responses("arithmetic", &p("a.jsonl"));
    assert_eq!(a.lines().count(), 4);
    assert_eq!(responses(&all, &p("b.jsonl")), a);
    // A bad split is refused by name; a missing dataset file is named.
    assert!(fails(&rlz(&["prompts", "--split", "test"])).contains("test"));
    let err = fails(&rlz(&["prompts", "--set", "run.dataset=/no/such/file.jsonl"]));
    assert!(err.contains("/no/such/file.jsonl"), "{err}");
}
