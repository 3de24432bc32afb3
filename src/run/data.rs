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
}

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
        Ok(Self { bos, chat })
    }

    /// The prompt text of `question`.
    pub fn write(&self, question: &str) -> Result<String> {
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
    let writer = PromptWriter::new(loaded)?;
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

/// Training and held-out prompts of `run.dataset`, written for `loaded`.
pub fn prompts(
    loaded: &Loaded,
    run: &RunSettings,
    seed: u64,
) -> Result<(Vec<Prompt>, Vec<Prompt>)> {
    let writer = PromptWriter::new(loaded)?;
    let rewrite = |ps: Vec<Prompt>| -> Result<Vec<Prompt>> {
        ps.into_iter().map(|p| Ok(Prompt { text: writer.write(&p.text)?, ..p })).collect()
    };
    let (mut train, test) = match run.dataset.as_str() {
        "addition" => addition_prompts(loaded, seed, run.eval_prompts),
        "arithmetic" => Ok((
            rewrite(arithmetic(4096, 1, seed)?)?,
            rewrite(arithmetic(run.eval_prompts, 1, seed ^ 0x5EED_E7A1)?)?,
        )),
        path => {
            let mut all = rewrite(load_jsonl(Path::new(path), &JsonlFields::default())?)?;
            if all.len() <= run.eval_prompts {
                bail!(
                    "run.dataset: {path} has {} prompts, need more than run.eval_prompts = {}",
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
