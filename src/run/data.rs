//! Prompt sets: two-digit addition with the embedded model's held-out split, seeded arithmetic, JSONL
//! files; the validation split; prompts written for the model (chat template or `<bos>` + question).

#[allow(clippy::wildcard_imports)]
use super::*;

/// `true` for the pairs held out of pretraining (and of RL training): the evaluation set of the
/// embedded model (`docs/tiny-model.md`).
pub fn held_out(a: u32, b: u32) -> bool {
    (a * 31 + b * 17) % 97 < 10
}

/// Writes questions for a model: after `<bos>` for the embedded model and for a model without a
/// chat template (a base model), through the chat template (one user turn, generation prompt)
/// for the others.
#[derive(Debug)]
pub struct PromptWriter {
    bos: String,
    chat: Option<rl_policy::template::ChatTemplate>,
    template: Option<String>,
}

/// The placeholder of `run.question_template` ([`RunSettings::question_template`]).
pub const QUESTION: &str = "{question}";

impl PromptWriter {
    /// The writer for `loaded` (fails when the model's chat template does not compile).
    pub fn new(loaded: &Loaded) -> Result<Self> {
        // The embedded model, and any model whose tokenizer has no chat template (a base
        // model), reads `<bos>` + the question; a template that exists must compile.
        let chat = match (loaded.tiny, loaded.tokenizer.chat_template()) {
            (false, Some(_)) => Some(loaded.tokenizer.chat()?),
            _ => None,
        };
        let bos = loaded.tokenizer.bos_token().unwrap_or_default().to_string();
        Ok(Self { bos, chat, template: None })
    }

    /// The writer that leaves questions as they are: no `<bos>`, no chat template, no question
    /// template ([`questions`]).
    pub fn plain() -> Self {
        Self { bos: String::new(), chat: None, template: None }
    }

    /// Writes each question into `template` first, at its [`QUESTION`] placeholder (`None`: the
    /// question as it is).
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// use rl_zero::run::{PromptWriter, load_model};
    /// let loaded = load_model(None, "main")?; // the embedded model: `<bos>` + question
    /// let writer = PromptWriter::new(&loaded)?.with_template(Some("Q: {question} A:"));
    /// assert!(writer.write("1 + 2?")?.ends_with("Q: 1 + 2? A:"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_template(mut self, template: Option<&str>) -> Self {
        self.template = template.map(str::to_string);
        self
    }

    /// The prompt text of `question`.
    pub fn write(&self, question: &str) -> Result<String> {
        let templated;
        let question = match &self.template {
            None => question,
            Some(t) => {
                templated = t.replacen(QUESTION, question, 1);
                &templated
            }
        };
        match &self.chat {
            None => Ok(format!("{}{question}", self.bos)),
            Some(t) => {
                let turn = rl_policy::template::ChatMessage::user(question.to_string());
                Ok(t.render(&[turn], true)?)
            }
        }
    }
}

/// Two-digit addition prompts `(train, held-out eval)`: `eval` held-out pairs, a fixed seeded
/// subset spread over the whole range.
pub fn addition_prompts(
    loaded: &Loaded,
    seed: u64,
    eval: usize,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    addition_split(&PromptWriter::new(loaded)?, seed, eval)
}

/// [`addition_prompts`] written by `writer`.
fn addition_split(
    writer: &PromptWriter,
    seed: u64,
    eval: usize,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let write = |a: u32, b: u32| -> Result<Prompt> {
        let q = format!("What is {a} + {b}? Put the final answer in \\boxed{{}}.");
        Ok(Prompt::new(writer.write(&q)?, (a + b).to_string()))
    };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for a in 10..100 {
        for b in 10..100 {
            if held_out(a, b) { test.push(write(a, b)?) } else { train.push(write(a, b)?) }
        }
    }
    let stride = (test.len() / eval.max(1)).max(1);
    let offset = (seed as usize) % stride;
    let test: Vec<Prompt> = test.into_iter().skip(offset).step_by(stride).take(eval).collect();
    if train.is_empty() || test.is_empty() {
        bail!("empty prompt split");
    }
    Ok((train, test))
}

/// The prompts a run evaluates on (`run.eval_split`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSplit {
    /// The dataset's held-out prompts (never trained on).
    #[default]
    Test,
    /// `run.eval_prompts` prompts removed from the training split (spread over it by a seeded
    /// stride): tune on these, report on `Test`.
    Validation,
}

impl EvalSplit {
    /// `true` for [`EvalSplit::Test`] (the default, left out of a saved `run.toml`).
    pub fn is_test(&self) -> bool {
        *self == EvalSplit::Test
    }
}

/// Removes `n` prompts from `train`, spread over it by a stride with a seeded offset, and returns
/// them in order (the validation split of [`EvalSplit::Validation`]).
pub(super) fn take_spread(train: &mut Vec<Prompt>, n: usize, seed: u64) -> Result<Vec<Prompt>> {
    if n == 0 || n >= train.len() {
        bail!(
            "run.eval_split = \"validation\": run.eval_prompts = {n} must be between 1 and the \
             {} training prompts minus one",
            train.len()
        );
    }
    let stride = train.len() / n;
    let offset = (seed as usize) % stride;
    let mut picked = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(train.len() - n);
    for (i, p) in std::mem::take(train).into_iter().enumerate() {
        if i >= offset && (i - offset).is_multiple_of(stride) && picked.len() < n {
            picked.push(p);
        } else {
            rest.push(p);
        }
    }
    *train = rest;
    Ok(picked)
}

/// What `run.dataset` names. Spelled as a string in a run file: `"addition"`, `"arithmetic"`
/// (level 1), `"arithmetic:N"` (level N of `rl_data::arithmetic`, 1-4), or a path to
/// a JSONL file.
///
/// ```
/// use rl_zero::run::Dataset;
/// assert_eq!("arithmetic:3".parse::<Dataset>()?, Dataset::Arithmetic { level: 3 });
/// assert_eq!("data/train.jsonl".parse::<Dataset>()?, Dataset::Jsonl("data/train.jsonl".into()));
/// assert!("arithmetic:9".parse::<Dataset>().is_err());
/// assert_eq!(Dataset::Arithmetic { level: 1 }.to_string(), "arithmetic");
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Dataset {
    /// Two-digit addition, with the embedded model's held-out split (`docs/tiny-model.md`).
    Addition,
    /// Seeded arithmetic of `rl_data::arithmetic` at `level` (1: `a ± b`, 2: `a × b`,
    /// 3: `a + b × c`, 4: `(a − b) × c + d`): 4096 training prompts, a separately seeded
    /// held-out set, and no held-out question among the training ones.
    Arithmetic {
        /// Difficulty 1-4.
        level: u8,
    },
    /// A JSONL file with `prompt` and `answer` fields (the last `run.eval_prompts` lines are
    /// held out).
    Jsonl(PathBuf),
}

impl std::str::FromStr for Dataset {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "addition" => Dataset::Addition,
            "arithmetic" => Dataset::Arithmetic { level: 1 },
            _ => match s.strip_prefix("arithmetic:") {
                Some(l) => match l.parse::<u8>() {
                    Ok(level @ 1..=4) => Dataset::Arithmetic { level },
                    _ => bail!("run.dataset: `{s}`: the arithmetic level must be 1, 2, 3 or 4"),
                },
                None if s.is_empty() => bail!("run.dataset: empty"),
                None => Dataset::Jsonl(PathBuf::from(s)),
            },
        })
    }
}

impl TryFrom<String> for Dataset {
    type Error = anyhow::Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dataset::Addition => f.write_str("addition"),
            Dataset::Arithmetic { level: 1 } => f.write_str("arithmetic"),
            Dataset::Arithmetic { level } => write!(f, "arithmetic:{level}"),
            Dataset::Jsonl(p) => write!(f, "{}", p.display()),
        }
    }
}

impl From<Dataset> for String {
    fn from(d: Dataset) -> Self {
        d.to_string()
    }
}

/// Training and held-out prompts of `run.dataset`, written for `loaded`.
pub fn prompts(
    loaded: &Loaded,
    run: &RunSettings,
    seed: u64,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let writer = PromptWriter::new(loaded)?.with_template(run.question_template.as_deref());
    written_splits(&writer, run, seed)
}

/// [`prompts`] before they are written for a model: the questions and answers of the training
/// and evaluation splits (`run.eval_split`) as a run with `seed` takes them, without
/// `run.question_template` or any model's prompt format (`rl-zero prompts` writes them as a
/// JSONL file that `run.dataset` reads back).
///
/// ```
/// use rl_zero::run::{RunFile, questions};
/// let f = RunFile::from_toml("[run]\ndataset = \"addition\"\neval_prompts = 3")?;
/// let (train, test) = questions(&f.run, f.trainer.seed)?;
/// assert_eq!(test.len(), 3);
/// assert!(test[0].text.starts_with("What is "));
/// assert!(train.iter().all(|p| test.iter().all(|t| t.text != p.text)));
/// # anyhow::Ok(())
/// ```
pub fn questions(run: &RunSettings, seed: u64) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    written_splits(&PromptWriter::plain(), run, seed)
}

/// Training and evaluation prompts of `run.dataset` written by `writer`.
fn written_splits(
    writer: &PromptWriter,
    run: &RunSettings,
    seed: u64,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let rewrite = |ps: Vec<Prompt>| -> Result<Vec<Prompt>> {
        ps.into_iter().map(|p| Ok(Prompt { text: writer.write(&p.text)?, ..p })).collect()
    };
    let (mut train, test) = match &run.dataset {
        Dataset::Addition => addition_split(writer, seed, run.eval_prompts),
        Dataset::Arithmetic { level } => {
            let test = rewrite(arithmetic(run.eval_prompts, *level, seed ^ 0x5EED_E7A1)?)?;
            let held: std::collections::HashSet<&str> =
                test.iter().map(|p| p.text.as_str()).collect();
            let mut train = rewrite(arithmetic(4096, *level, seed)?)?;
            train.retain(|p| !held.contains(p.text.as_str()));
            Ok((train, test))
        }
        Dataset::Jsonl(path) => {
            let mut all = rewrite(load_jsonl(path, &JsonlFields::default())?)?;
            if all.len() <= run.eval_prompts {
                bail!(
                    "run.dataset: {} has {} prompts, need more than run.eval_prompts = {}",
                    path.display(),
                    all.len(),
                    run.eval_prompts
                );
            }
            let test = all.split_off(all.len() - run.eval_prompts);
            Ok((all, test))
        }
    }?;
    match run.eval_split {
        EvalSplit::Test => Ok((train, test)),
        EvalSplit::Validation => {
            let validation = take_spread(&mut train, run.eval_prompts, seed)?;
            Ok((train, validation))
        }
    }
}
