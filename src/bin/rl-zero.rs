//! The `rl-zero` command line.
//!
//! ```text
//! rl-zero score --input samples.jsonl [--output scored.jsonl] [--response-field response]
//!               [--answer-field answer] [--reward '{"type": "orz"}']
//! rl-zero train --config recipes/dr_grpo.toml [--steps N] [--model M] [--out DIR]
//!               [--set KEY=VALUE] [--resume [--allow-config-change] | --overwrite]
//! rl-zero eval [--model M] [--config F] [--prompts N] [--set KEY=VALUE] [--responses F]
//! rl-zero prompts [--config F] [--set KEY=VALUE] [--split train|eval] [--output F]
//! ```
//!
//! `train` runs a recipe (`docs/cli.md`): PPO with a critic when the advantage estimator uses
//! values, else the GRPO family, with periodic greedy evaluation on held-out prompts and
//! checkpoints; it prints the accuracy curve. `eval` prints the greedy held-out accuracy of a
//! model or checkpoint.
//!
//! `score` reads one JSON object per line, grades the response against the answer with the math
//! verifier, and writes each object back with `reward`, `extracted`, `correct` and, when no
//! answer could be found, `reason`. A summary (count, accuracy, parse failures) goes to stderr.
//! A malformed line stops the run with an error naming its line number; nothing is skipped, and
//! `--output` is written to a temporary file renamed into place at the end, so a failed run leaves
//! no partial output (and `--output` may not name the input).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use rl_zero::core::{FinishReason, RewardFn, Sample};
use rl_zero::reward::tasks::json_text;
use rl_zero::reward::{BuiltinReward, MathVerifier};
use rl_zero::run::{self, RunFile};
use serde_json::{Map, Value};

/// rl-zero: composable RL for training language models to reason.
#[derive(Debug, Parser)]
#[command(name = "rl-zero", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Grade model responses in a JSONL file with the math verifier (and optionally a reward).
    Score(ScoreArgs),
    /// Train a model with a recipe (a TOML run file, see docs/cli.md).
    Train(TrainArgs),
    /// Greedy accuracy of a model or checkpoint on the held-out prompts.
    Eval(EvalArgs),
    /// Start N ranks of an rl-zero command on this node, data-parallel (torchrun's conventions:
    /// each rank gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), e.g.
    /// `rl-zero launch --nproc-per-node 2 -- train --config recipes/tiny/dr_grpo.toml`.
    /// Output is prefixed `[rank N]`; when one rank fails, the others are stopped.
    Launch(LaunchArgs),
    /// Write the questions and answers of a run's training or evaluation split as JSONL, one
    /// `{"prompt", "answer", ...}` object per line before any template (a file `run.dataset`
    /// reads back), e.g. to read a generated task or to train another tool on the same prompts.
    Prompts(PromptsArgs),
    /// Write a model as a Hugging Face directory an inference engine serves (config, weights in
    /// `--dtype`, generation config, tokenizer), e.g. the SmolLM2 GGUF for vLLM (docs/rollout.md).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Model: a `.gguf` file, a Hugging Face directory or a Hub id; default the embedded model.
    #[arg(long)]
    model: Option<String>,
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype: float32, bfloat16 or float16.
    #[arg(long, default_value = "float32")]
    dtype: String,
}

#[derive(Debug, Args)]
struct PromptsArgs {
    /// Run file giving `run.dataset`, `run.eval_prompts`, `run.eval_split` and the seed
    /// (`trainer.seed`). Default: `recipes/tiny/dr_grpo.toml` (built in).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a run-file setting, `KEY=VALUE` with a dotted key (repeatable), as `train`'s.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The training prompts, or the ones a run evaluates on (held out, or the validation split
    /// with `run.eval_split = "validation"`).
    #[arg(long, value_enum, default_value = "train")]
    split: Split,
    /// Output JSONL file (stdout when absent).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// A split of a run's prompts.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Split {
    /// The prompts a run trains on.
    Train,
    /// The prompts a run evaluates on.
    Eval,
}

#[derive(Debug, Args)]
struct LaunchArgs {
    /// Ranks on this node.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index (0-based).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of rank 0's node.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port of the rendezvous on rank 0's node (0: a free port, single node only).
    #[arg(long, default_value_t = 0)]
    master_port: u16,
    /// The rl-zero command every rank runs (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// Recipe / run file (e.g. recipes/dr_grpo.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Total training steps (overrides `run.steps`).
    #[arg(long)]
    steps: Option<usize>,
    /// Model: a `.gguf` file, a Hugging Face directory or a Hub id (overrides `run.model`).
    #[arg(long)]
    model: Option<String>,
    /// Output directory (overrides `run.out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a run-file setting, `KEY=VALUE` with a dotted key (repeatable; later wins):
    /// `--set run.compute_dtype=bf16 --set trainer.seed=4 --set trainer.actor.lr=1e-5`. The
    /// value is TOML (`4`, `2e-5`, `true`, `"x"`) or else a string. Applied before `--steps`,
    /// `--model` and `--out`; the saved `run.toml` holds the result.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue from the latest checkpoint under `<out>/checkpoints` (the run file must equal the
    /// run's saved `<out>/run.toml`, except `run.steps`, `run.out`, `run.eval_every`,
    /// `run.save_every`, `run.keep_last`).
    #[arg(long)]
    resume: bool,
    /// Start again in a non-empty `<out>`: delete its run files (`run.toml`, `metrics.jsonl`,
    /// `curves.svg`, `checkpoints/`, `eval/`) first; other files are kept.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// With `--resume`: accept a run file that differs from the saved `run.toml` (each change
    /// is printed and `run.toml` is rewritten).
    #[arg(long, requires = "resume")]
    allow_config_change: bool,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// Model or checkpoint (a `step-NNNNNN` directory, its `policy/`, or a run's `checkpoints/`);
    /// default: `run.model` of the config (the embedded tiny model).
    #[arg(long)]
    model: Option<String>,
    /// Run file giving the base model (tokenizer, prompt style), dataset, reward and sampling.
    /// Default: `recipes/tiny/dr_grpo.toml` (built in) without `--model`, else the run-file
    /// defaults (512 new tokens).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Held-out prompts (overrides `run.eval_prompts`).
    #[arg(long)]
    prompts: Option<usize>,
    /// Override a run-file setting, `KEY=VALUE` with a dotted key (repeatable), as `train`'s.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Also write every response with its prompt, answer, finish reason and reward to this
    /// JSONL file.
    #[arg(long)]
    responses: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScoreArgs {
    /// Input JSONL file (one object per line).
    #[arg(long, short)]
    input: PathBuf,
    /// Output JSONL file (stdout when absent).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Field holding the model response.
    #[arg(long, default_value = "response")]
    response_field: String,
    /// Field holding the ground-truth answer (string or number).
    #[arg(long, default_value = "answer")]
    answer_field: String,
    /// A built-in reward as JSON (e.g. '{"type": "orz"}'); `reward` is then its score, computed
    /// with the optional fields `finish` or `finish_reason` ("stop" | "eos" | "stop_string" |
    /// "length" | "abort"; "stop" is OpenAI's / vLLM's "stopped by itself", as "eos") and
    /// `response_tokens`. Default: 1.0 when correct, else 0.0.
    #[arg(long)]
    reward: Option<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Each command sets up the runtime first (`RLZ_BLAS=<libmkl_rt.so>`: CPU matrix products in
    // MKL, scripts/setup_mkl.sh).
    let result = match Cli::parse().command {
        Command::Score(args) => score(&args),
        Command::Train(args) => train(&args),
        Command::Eval(args) => eval(&args),
        Command::Launch(args) => launch(&args),
        Command::Export(args) => export(&args),
        Command::Prompts(args) => prompts(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of stdout has gone (`rl-zero prompts | head`): stop quietly, as Unix tools do.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // The message and its causes; the backtrace only when asked for explicitly
            // (`RUST_BACKTRACE=full`), since many environments set `RUST_BACKTRACE=1` globally.
            eprintln!("Error: {e}");
            let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
            if !causes.is_empty() {
                eprintln!("Caused by:");
                for c in causes {
                    eprintln!("    {c}");
                }
            }
            if std::env::var("RUST_BACKTRACE").is_ok_and(|v| v == "full") {
                eprintln!("{}", e.backtrace());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn train(args: &TrainArgs) -> Result<()> {
    let mut file = RunFile::from_toml_file_with(&args.config, &args.set)?;
    if let Some(s) = args.steps {
        file.run.steps = s;
    }
    if let Some(m) = &args.model {
        file.run.model = Some(m.clone());
    }
    if let Some(o) = &args.out {
        file.run.out = o.clone();
    }
    run::init_runtime(file.run.model.as_deref())?;
    let opts = run::TrainOptions {
        resume: args.resume,
        overwrite: args.overwrite,
        allow_config_change: args.allow_config_change,
    };
    let out = run::train_with(&file, opts, &mut |line| println!("{line}"))?;
    println!("held-out greedy accuracy curve (step: accuracy):");
    for p in &out.curve {
        println!("  {:>6}: {:.3}", p.step, p.report.accuracy);
    }
    Ok(())
}

fn export(args: &ExportArgs) -> Result<()> {
    let dtype = rl_zero::rollout::export_dtype(&args.dtype, "--dtype")?;
    run::init_runtime(args.model.as_deref())?;
    let bytes = run::export_model(args.model.as_deref(), "main", &args.out, dtype)?;
    println!("wrote {} ({bytes} bytes of weights, {})", args.out.display(), args.dtype);
    Ok(())
}

/// The run file `rl-zero eval` uses for the embedded model when given neither `--config` nor
/// `--model`.
const EMBEDDED_RUN: &str = include_str!("../../recipes/tiny/dr_grpo.toml");

fn eval(args: &EvalArgs) -> Result<()> {
    let mut file = match &args.config {
        Some(c) => RunFile::from_toml_file_with(c, &args.set)?,
        // The embedded model alone: its own recipe's settings (16 new tokens fit its context
        // of 128 positions, the default 512 does not).
        None if args.model.is_none() => RunFile::from_toml_with(EMBEDDED_RUN, &args.set)?,
        None => RunFile::from_toml_with("", &args.set)?,
    };
    if let Some(n) = args.prompts {
        file.run.eval_prompts = n;
    }
    run::init_runtime(args.model.as_deref().or(file.run.model.as_deref()))?;
    let r = run::eval(&file, args.model.as_deref())?;
    println!(
        "greedy accuracy {:.3} (mean reward {:.3}, {} held-out prompts)",
        r.accuracy, r.mean_reward, r.responses
    );
    if let Some(path) = &args.responses {
        r.write_jsonl(path)?;
        println!("responses {}", path.display());
    }
    Ok(())
}

/// The `finish` / `finish_reason` field of a `score` line (`n`: its line number), in rl-zero's
/// spelling or OpenAI's / vLLM's: `"stop"` (stopped by itself: an EOS token or a stop string)
/// counts as `eos`, `"abort"` as aborted.
fn finish_reason(obj: &Map<String, Value>, n: usize) -> Result<Option<FinishReason>> {
    let mut found: Option<(&str, FinishReason)> = None;
    for key in ["finish", "finish_reason"] {
        let Some(v) = obj.get(key) else { continue };
        let reason = match v.as_str() {
            Some("eos" | "stop") => FinishReason::Eos,
            Some("stop_string") => FinishReason::StopString,
            Some("length") => FinishReason::Length,
            Some("abort" | "aborted") => FinishReason::Aborted,
            _ => bail!(
                "line {n}: `{key}` must be \"stop\", \"eos\", \"stop_string\", \"length\" or \
                 \"abort\", not {v}"
            ),
        };
        match found {
            None => found = Some((key, reason)),
            Some((first, r)) if r != reason && !(r.stopped() && reason.stopped()) => {
                bail!("line {n}: `{first}` and `{key}` disagree ({r:?} vs {reason:?})")
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(_, r)| r))
}

/// `true` when `output` names the same file as `input` (both canonicalised; an output that does
/// not exist yet is a different file).
fn same_file(input: &Path, output: &Path) -> Result<bool> {
    let input =
        std::fs::canonicalize(input).with_context(|| format!("cannot open {}", input.display()))?;
    Ok(std::fs::canonicalize(output).is_ok_and(|o| o == input))
}

/// Runs `body` on `output` (stdout when `None`). A file is written as a temporary file next to
/// it, renamed into place when `body` succeeds: a failure leaves no partial output (the
/// temporary file is deleted on drop).
fn write_output<T>(
    output: Option<&Path>,
    body: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let Some(p) = output else {
        let mut out = BufWriter::new(std::io::stdout().lock());
        let v = body(&mut out)?;
        out.flush()?;
        return Ok(v);
    };
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".rl-zero-").suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).with_context(|| format!("cannot create {}", p.display()))?;
    let mut out = BufWriter::new(tmp.as_file());
    let v = body(&mut out)?;
    out.flush().with_context(|| format!("cannot write {}", p.display()))?;
    drop(out);
    tmp.persist(p).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(v)
}

/// One JSON object per prompt: `prompt` (the question), `answer` and its metadata fields, the
/// lines `run.dataset` reads back (`rl-zero prompts`).
fn prompts(args: &PromptsArgs) -> Result<()> {
    let file = match &args.config {
        Some(c) => RunFile::from_toml_file_with(c, &args.set)?,
        None => RunFile::from_toml_with(EMBEDDED_RUN, &args.set)?,
    };
    let (train, eval) = run::questions(&file.run, file.trainer.seed)?;
    let (rows, name) = match args.split {
        Split::Train => (train, "training"),
        Split::Eval => (eval, "evaluation"),
    };
    write_output(args.output.as_deref(), |out| {
        for p in &rows {
            let mut line = Map::new();
            line.insert("prompt".into(), Value::String(p.text.clone()));
            if let Some(a) = &p.answer {
                line.insert("answer".into(), Value::String(a.clone()));
            }
            for (k, v) in &p.metadata {
                line.entry(k.clone()).or_insert_with(|| v.clone());
            }
            writeln!(out, "{}", Value::Object(line))?;
        }
        Ok(())
    })?;
    eprintln!("{} {name} prompts of {}", rows.len(), file.run.dataset);
    Ok(())
}

fn score(args: &ScoreArgs) -> Result<()> {
    rl_zero::policy::runtime::init(Default::default())?;
    let reward: Option<BuiltinReward> = args
        .reward
        .as_deref()
        .map(|r| serde_json::from_str(r).context("--reward is not a valid built-in reward"))
        .transpose()?;
    if let Some(r) = &reward {
        r.validate()?;
    }
    let input =
        File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    if let Some(p) = &args.output
        && same_file(&args.input, p)?
    {
        bail!(
            "--output {} is the input file: it would be overwritten while it is read; write to \
             another file",
            p.display()
        );
    }
    let (count, correct, unparsed) =
        write_output(args.output.as_deref(), |out| score_lines(args, reward.as_ref(), input, out))?;
    let acc = if count == 0 { 0.0 } else { correct as f64 / count as f64 };
    eprintln!(
        "scored {count} samples: accuracy {:.2}% ({correct} correct), {unparsed} without an extractable answer",
        acc * 100.0
    );
    Ok(())
}

/// Scores every line of `input` into `out`; returns (samples, correct, without an answer).
fn score_lines(
    args: &ScoreArgs,
    reward: Option<&BuiltinReward>,
    input: File,
    out: &mut dyn Write,
) -> Result<(usize, usize, usize)> {
    let verifier = MathVerifier::default();
    let (mut count, mut correct, mut unparsed) = (0usize, 0usize, 0usize);
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("line {n}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut obj: Map<String, Value> = match serde_json::from_str(&line) {
            Ok(Value::Object(o)) => o,
            Ok(_) => bail!("line {n}: expected a JSON object"),
            Err(e) => bail!("line {n}: invalid JSON: {e}"),
        };
        let response = obj
            .get(&args.response_field)
            .and_then(Value::as_str)
            .with_context(|| format!("line {n}: missing string field `{}`", args.response_field))?
            .to_string();
        let answer = json_text(obj.get(&args.answer_field)).with_context(|| {
            format!("line {n}: missing field `{}` (string or number)", args.answer_field)
        })?;
        let verdict = verifier.check(&answer, &response);
        let value = match reward {
            None => f32::from(u8::from(verdict.correct)),
            Some(r) => {
                let mut sample = Sample::new(response.clone(), answer.clone());
                if let Some(f) = finish_reason(&obj, n)? {
                    sample.finish = f;
                }
                if let Some(t) = obj.get("response_tokens") {
                    sample.response_tokens = t.as_u64().with_context(|| {
                        format!("line {n}: `response_tokens` must be a non-negative integer")
                    })? as usize;
                }
                r.score(&sample).with_context(|| format!("line {n}: reward failed"))?
            }
        };
        count += 1;
        correct += usize::from(verdict.correct);
        unparsed += usize::from(verdict.extracted.is_none());
        obj.insert("reward".into(), value.into());
        obj.insert("extracted".into(), verdict.extracted.map_or(Value::Null, Value::from));
        obj.insert("correct".into(), verdict.correct.into());
        if let Some(reason) = verdict.reason {
            obj.insert("reason".into(), reason.into());
        }
        serde_json::to_writer(&mut *out, &obj)?;
        out.write_all(b"\n")?;
    }
    Ok((count, correct, unparsed))
}

fn launch(args: &LaunchArgs) -> Result<()> {
    if args.nnodes > 1 && args.master_port == 0 {
        anyhow::bail!("--master-port is required with --nnodes > 1 (every node must agree on it)");
    }
    let exe = std::env::current_exe().context("cannot find the rl-zero executable")?;
    let mut launcher = rl_zero::dist::Launcher::new(args.nproc_per_node)
        .nodes(args.nnodes, args.node_rank)
        .master_addr(args.master_addr.clone());
    if args.master_port != 0 {
        launcher = launcher.master_port(args.master_port);
    }
    let mut command = vec![exe.into_os_string()];
    command.extend(args.command.iter().map(Into::into));
    let report = launcher.run(&command)?;
    eprintln!(
        "launch: {} ranks finished in {:.1} s",
        report.statuses.len(),
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
