//! Prompt formatting: Hugging Face chat templates ([`ChatTemplate`], Jinja rendered with
//! minijinja the way transformers' `apply_chat_template` renders it) and the fixed R1-Zero
//! prompt templates of the reference recipes ([`PromptTemplate`]).
//!
//! ```
//! use rl_policy::template::{ChatMessage, ChatTemplate, PromptTemplate};
//!
//! let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
//!               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
//! let chat = ChatTemplate::new(source, "", "<|im_end|>")?;
//! let text = chat.render(&[ChatMessage::user(" What is 12+34? ")], true)?;
//! assert_eq!(text, "<|im_start|>user\nWhat is 12+34?<|im_end|>\n<|im_start|>assistant\n");
//!
//! let r1 = PromptTemplate::R1;
//! assert!(r1.apply("What is 12+34?", "").ends_with("User: What is 12+34?\nAssistant: <think>"));
//! assert_eq!(r1.stop_strings(), ["</answer>"]);
//! # Ok::<(), rl_policy::PolicyError>(())
//! ```

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{PolicyError, Result};

/// Name under which the chat template is stored in the environment.
const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn: `role` (`"system"`, `"user"`, `"assistant"`, ...) and its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled Hugging Face chat template (the `chat_template` of `tokenizer_config.json` or
/// GGUF `tokenizer.chat_template`).
///
/// Rendering follows transformers: `trim_blocks` and `lstrip_blocks` on, a `raise_exception(msg)`
/// function (rendering fails with that message), Python string / dict methods (`strip`, `split`,
/// `startswith`, `items`, ... via minijinja-contrib's `pycompat`), a `tojson` filter that
/// writes like Python's `json.dumps(ensure_ascii=False)` (`", "` / `": "` separators, key order
/// kept, optional `indent`), and booleans / none printed as `True` / `False` / `None`. Context: `messages`, `add_generation_prompt`, `bos_token`,
/// `eos_token`, plus any extra variables given to [`ChatTemplate::render_json`].
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`. Errors with [`PolicyError::Config`] (`field = "chat_template"`) on a
    /// syntax error.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", py_tojson);
        // Jinja2 prints Python's spelling of booleans and None.
        env.set_formatter(|out, state, value| match value.kind() {
            ValueKind::Bool => Ok(out.write_str(if value.is_true() { "True" } else { "False" })?),
            ValueKind::None => Ok(out.write_str("None")?),
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| PolicyError::config("chat_template", format!("{e:#}")))?;
        Ok(Self { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the opening of an
    /// assistant turn (what a policy continues from). Errors with [`PolicyError::Input`]
    /// (`what = "chat messages"`) when the template raises (e.g. roles out of order).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_json(
            &serde_json::to_value(messages)?,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// Like [`ChatTemplate::render`] with free-form `messages` (a JSON list of objects, e.g. with
    /// `tool_calls`) and `extra` context variables (e.g. `tools`, `enable_thinking`).
    ///
    /// Objects are seen by the template in `serde_json::Map` order, i.e. sorted by key unless
    /// serde_json's `preserve_order` feature is on, so `tojson` of a tool schema lists keys
    /// sorted where transformers keeps the caller's order.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if !messages.is_array() {
            return Err(PolicyError::input("chat messages", "expected a JSON list of messages"));
        }
        let mut ctx = extra.clone();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("bos_token".into(), self.bos_token.clone().into());
        ctx.insert("eos_token".into(), self.eos_token.clone().into());
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| PolicyError::config("chat_template", e.to_string()))?;
        template
            .render(Value::from_serialize(&ctx))
            .map_err(|e| PolicyError::input("chat messages", format!("{e:#}")))
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn py_tojson(value: &Value, indent: Option<usize>) -> std::result::Result<Value, JinjaError> {
    let mut out = String::new();
    write_py_json(value, indent, 0, &mut out)?;
    // The result is inserted verbatim (no HTML escaping).
    Ok(Value::from_safe_string(out))
}

fn write_py_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), JinjaError> {
    let json_err =
        |e: serde_json::Error| JinjaError::new(ErrorKind::BadSerialization, e.to_string());
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).map_err(json_err)?)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let name = key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&name).map_err(json_err)?);
                out.push_str(": ");
                write_py_json(&v.get_item(key)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).map_err(json_err)?),
    }
    Ok(())
}

/// The R1-Zero-style instruction that Open-Reasoner-Zero wraps around a question
/// (`orz:playground/zero_setting_base.py`; Jinja drops the template's trailing newline).
const ORZ_INSTRUCTION: &str = "You must put your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. \
And your final answer will be extracted automatically by the \\boxed{} tag.\nThis is the problem:\n";

/// The shared preamble of the R1-Zero prompts (ORZ and oat's `r1`).
const R1_PREAMBLE: &str = "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. \
The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. \
The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, \
respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.";

/// Fixed prompt templates of the R1-Zero recipes: they turn a bare question into the text the
/// policy continues, and say which strings end a generation (`include_stop_str_in_output`: the
/// stop string stays in the response).
///
/// Serialised in snake case: `"open_reasoner_zero"` (alias `"orz"`), `"r1"`, `"qwen_math"`,
/// `"none"` (alias `"no"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptTemplate {
    /// Open-Reasoner-Zero (`orz:playground/zero_setting_base.py L12-22`):
    /// `{bos}` + R1 preamble + `" User: "` + instruction + question + `"\nAssistant: <think>"`.
    /// Stops at `User:`, `Human:`, `Assistant:`, `</answer>`.
    #[serde(alias = "orz")]
    OpenReasonerZero,
    /// oat / understand-r1-zero `r1` (`urz:train_zero_math.py L45-71`): R1 preamble +
    /// `"\nUser: {q}\nAssistant: <think>"`. Stops at `</answer>`.
    R1,
    /// oat / understand-r1-zero `qwen_math` (their default): the Qwen chat markup with the
    /// "reason step by step ... \boxed{}" system prompt. Ends at EOS (no stop strings).
    #[default]
    QwenMath,
    /// The raw question (`no` in oat). Ends at EOS.
    #[serde(alias = "no")]
    None,
}

impl PromptTemplate {
    /// Every template, in declaration order.
    pub const ALL: [PromptTemplate; 4] =
        [Self::OpenReasonerZero, Self::R1, Self::QwenMath, Self::None];

    /// The prompt text for `question`. `bos_token` is used by [`PromptTemplate::OpenReasonerZero`]
    /// only (ORZ prefixes the tokenizer's BOS text, `""` when the model has none).
    pub fn apply(&self, question: &str, bos_token: &str) -> String {
        match self {
            Self::OpenReasonerZero => {
                format!(
                    "{bos_token}{R1_PREAMBLE} User: {ORZ_INSTRUCTION}{question}\nAssistant: <think>"
                )
            }
            Self::R1 => format!("{R1_PREAMBLE}\nUser: {question}\nAssistant: <think>"),
            Self::QwenMath => format!(
                "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n\
                 <|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
            ),
            Self::None => question.to_owned(),
        }
    }

    /// Strings that end a generation besides EOS.
    pub fn stop_strings(&self) -> &'static [&'static str] {
        match self {
            Self::OpenReasonerZero => &["User:", "Human:", "Assistant:", "</answer>"],
            Self::R1 => &["</answer>"],
            Self::QwenMath | Self::None => &[],
        }
    }

    /// The snake-case name (as serialised).
    pub fn name(&self) -> &'static str {
        match self {
            Self::OpenReasonerZero => "open_reasoner_zero",
            Self::R1 => "r1",
            Self::QwenMath => "qwen_math",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for PromptTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PromptTemplate {
    type Err = PolicyError;

    /// Parses a serialised name or alias; errors with [`PolicyError::Config`]
    /// (`field = "prompt_template"`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "open_reasoner_zero" | "orz" => Ok(Self::OpenReasonerZero),
            "r1" => Ok(Self::R1),
            "qwen_math" => Ok(Self::QwenMath),
            "none" | "no" => Ok(Self::None),
            other => Err(PolicyError::config(
                "prompt_template",
                format!(
                    "unknown template `{other}` (expected open_reasoner_zero, r1, qwen_math or none)"
                ),
            )),
        }
    }
}
