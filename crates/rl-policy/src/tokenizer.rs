//! Text ↔ token ids for the policy: a [`Tokenizer`] wrapping [`tokenizers::Tokenizer`] with the
//! special ids generation needs (BOS, one or several EOS, pad) and the model's chat template.
//!
//! Two sources:
//! * a Hugging Face directory: `tokenizer.json`, plus `tokenizer_config.json` (special tokens,
//!   `chat_template`), `chat_template.jinja` and `generation_config.json` (EOS ids) when present
//!   ([`Tokenizer::from_hf_dir`]);
//! * GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), rebuilt as a byte-level BPE
//!   whose ids match the model's own tokenizer ([`Tokenizer::from_gguf`]).
//!
//! GGUF support covers the byte-level BPE family (`tokenizer.ggml.model = "gpt2"`) with the
//! pre-tokenizer splits listed in [`GGUF_PRE_TOKENIZERS`]; anything else is a
//! [`PolicyError::Config`] naming the offending key, never a silently different tokenizer.
//!
//! ```
//! use rl_policy::tokenizer::Tokenizer;
//!
//! // <workspace>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched on first use).
//! let tok = Tokenizer::from_gguf_file(rl_policy::testing_assets::smollm2_gguf()?)?;
//! let ids = tok.encode("What is 12+34?", false)?;
//! assert_eq!(ids, [1780, 314, 216, 33, 34, 27, 35, 36, 47]);
//! assert_eq!(tok.decode(&ids, false)?, "What is 12+34?");
//! assert_eq!(tok.eos_ids(), &[2]);
//! # Ok::<(), rl_policy::PolicyError>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use serde_json::Value as Json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::template::{ChatMessage, ChatTemplate};
use crate::{PolicyError, Result};

/// Split regex of Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen (single digits, `\p{L}` runs with an
/// optional leading non-letter, punctuation runs with trailing newlines).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Split regex of Llama 3 (digits in groups of up to three).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values [`Tokenizer::from_gguf`] understands, with how each splits text
/// before byte-level BPE (the same splits as llama.cpp's `llama-vocab.cpp` and the models' own
/// `tokenizer.json`):
///
/// | `pre` | split |
/// |---|---|
/// | `smollm`, `starcoder`, `refact`, `codeshell` | every digit alone, then the GPT-2 regex |
/// | `gpt-2` | the GPT-2 regex |
/// | `qwen2`, `deepseek-r1-qwen` | the Qwen2 regex (single digits) |
/// | `llama3`, `llama-v3`, `llama-bpe` | the Llama 3 regex (digits in threes) |
pub const GGUF_PRE_TOKENIZERS: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "gpt-2",
    "qwen2",
    "deepseek-r1-qwen",
    "llama3",
    "llama-v3",
    "llama-bpe",
];

/// GGUF `tokenizer.ggml.token_type` of control tokens (`<|im_end|>`): special tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` of user-defined tokens (`<think>`): matched whole, not special.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer with the special ids and chat template of one model.
///
/// Token ids are `u32` (the dtype candle uses for id tensors). Cloning is cheap enough for setup
/// code (the vocabulary is copied); share it behind an `Arc` in hot paths.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(u32, String)>,
    eos: Option<String>,
    eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    /// BOS / EOS added by [`Tokenizer::encode`] itself (GGUF; `tokenizer.json` has a post-processor).
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .field("pad_id", &self.pad_id)
            .field("chat_template", &self.chat_template.as_ref().map(|t| t.len()))
            .finish()
    }
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> PolicyError {
    PolicyError::CorruptFile { path: path.to_path_buf(), reason: reason.to_string() }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| corrupt(path, e))
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `eos_token_id` in `generation_config.json` / `config.json`: an id or a list of ids.
fn ids_of(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => {
            n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect()
        }
        Some(Json::Array(a)) => {
            a.iter().filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok())).collect()
        }
        _ => Vec::new(),
    }
}

fn push_unique(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// GPT-2's byte → printable char table (`bytes_to_unicode`): printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, with special tokens and the chat template from
    /// `tokenizer_config.json` (or `chat_template.jinja`) and EOS / BOS / pad ids from
    /// `generation_config.json` (falling back to `config.json`, then to the tokens named in
    /// `tokenizer_config.json`). Several EOS ids are kept in order, without duplicates.
    ///
    /// Errors: [`PolicyError::MissingFile`] without `tokenizer.json`, [`PolicyError::CorruptFile`]
    /// for unparsable JSON.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(PolicyError::MissingFile { path: tok_path });
        }
        let inner =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| corrupt(&tok_path, e))?;
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let gen_cfg = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
        let model_cfg = read_json(&dir.join("config.json"))?.unwrap_or(Json::Null);

        let named = |key: &str| cfg.get(key).and_then(token_content);
        let id_of = |name: &Option<String>| name.as_deref().and_then(|t| inner.token_to_id(t));
        let bos_name = named("bos_token");
        let eos_name = named("eos_token");
        let pad_name = named("pad_token");

        let mut eos_ids = ids_of(gen_cfg.get("eos_token_id"));
        if eos_ids.is_empty() {
            eos_ids = ids_of(model_cfg.get("eos_token_id"));
        }
        push_unique(&mut eos_ids, id_of(&eos_name));
        let first_id = |key: &str| {
            ids_of(gen_cfg.get(key)).into_iter().chain(ids_of(model_cfg.get(key))).next()
        };
        let bos_id = id_of(&bos_name).or_else(|| first_id("bos_token_id"));
        let bos = bos_id.and_then(|id| inner.id_to_token(id).map(|t| (id, t)));
        let pad_id = id_of(&pad_name).or_else(|| first_id("pad_token_id"));
        let eos = eos_name.or_else(|| eos_ids.first().and_then(|&id| inner.id_to_token(id)));

        let chat_template = match cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_owned),
            _ => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.exists() { Some(std::fs::read_to_string(jinja)?) } else { None }
            }
        };
        Ok(Self { inner, bos, eos, eos_ids, pad_id, add_bos: false, add_eos: false, chat_template })
    }

    /// Reads the GGUF header of `path` and builds the tokenizer with [`Tokenizer::from_gguf`].
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(PolicyError::MissingFile { path: path.to_path_buf() });
        }
        let mut file = std::fs::File::open(path)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| corrupt(path, e))?;
        Self::from_gguf(&content)
    }

    /// Builds the tokenizer described by GGUF metadata: vocabulary `tokenizer.ggml.tokens`, merges
    /// `tokenizer.ggml.merges`, the split for `tokenizer.ggml.pre` (see [`GGUF_PRE_TOKENIZERS`]),
    /// byte-level decoding, control tokens (`token_type` 3) as special tokens and user-defined
    /// ones (4) as whole tokens, BOS/EOS/pad from `tokenizer.ggml.{bos,eos,padding}_token_id`
    /// (plus `eot_token_id` / `eom_token_id` as extra EOS ids), `add_bos_token` /
    /// `add_eos_token`, and `tokenizer.chat_template`.
    ///
    /// Errors: [`PolicyError::Config`] with `field` = the metadata key when a key is missing or
    /// has the wrong type, when `tokenizer.ggml.model` is not `"gpt2"` (byte-level BPE) or when
    /// `tokenizer.ggml.pre` is not in [`GGUF_PRE_TOKENIZERS`].
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let bad = |key: &str, reason: String| PolicyError::config(key, reason);
        let get = |key: &str| {
            md.get(key).ok_or_else(|| bad(key, "missing from the GGUF metadata".into()))
        };
        let string = |key: &str| -> Result<String> {
            get(key)?.to_string().cloned().map_err(|e| bad(key, e.to_string()))
        };
        let opt_u32 = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let opt_bool = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());

        let model = string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(bad(
                "tokenizer.ggml.model",
                format!(
                    "`{model}` is not supported: only byte-level BPE (`gpt2`) tokenizers can be built from GGUF"
                ),
            ));
        }
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let pre_tokenizer = gguf_pre_tokenizer(&pre)?;

        let strings = |key: &str| -> Result<Vec<String>> {
            get(key)?
                .to_vec()
                .map_err(|e| bad(key, e.to_string()))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(|e| bad(key, e.to_string())))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let token_types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| bad("tokenizer.ggml.token_type", e.to_string()))?
                .iter()
                .map(|t| t.to_i32().map(i64::from).or_else(|_| t.to_u32().map(i64::from)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad("tokenizer.ggml.token_type", e.to_string()))?,
            None => Vec::new(),
        };

        // Vocabulary: tokens are stored spelled in GPT-2's byte alphabet; re-spell the few that
        // are not (a llama.cpp quirk), as transformers does.
        let alphabet = byte_alphabet();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let spell = |t: &str| -> String {
            if in_alphabet(t) {
                t.to_owned()
            } else {
                t.bytes().map(|b| alphabet[usize::from(b)]).collect()
            }
        };
        let mut vocab = Vocab::default();
        for (id, t) in tokens.iter().enumerate() {
            let id = u32::try_from(id)
                .map_err(|_| bad("tokenizer.ggml.tokens", "more than 2^32 tokens".into()))?;
            vocab.insert(spell(t), id);
        }
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| {
                    bad("tokenizer.ggml.merges", format!("merge `{m}` is not `left right`"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad("tokenizer.ggml.merges", e.to_string()))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let typed = |wanted: i64| {
            tokens.iter().zip(&token_types).filter(move |&(_, &ty)| ty == wanted).map(|(t, _)| t)
        };
        // A control token spelled outside the byte alphabet is a mislabel; skip it like transformers.
        let control: Vec<AddedToken> = typed(TOKEN_TYPE_CONTROL)
            .filter(|t| in_alphabet(t))
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        inner
            .add_special_tokens(control)
            .map_err(|e| bad("tokenizer.ggml.token_type", e.to_string()))?;
        let user: Vec<AddedToken> = typed(TOKEN_TYPE_USER_DEFINED)
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        inner.add_tokens(user).map_err(|e| bad("tokenizer.ggml.token_type", e.to_string()))?;

        let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let bos_id = opt_u32("tokenizer.ggml.bos_token_id");
        let eos_id = opt_u32("tokenizer.ggml.eos_token_id");
        let mut eos_ids = Vec::new();
        push_unique(
            &mut eos_ids,
            [
                eos_id,
                opt_u32("tokenizer.ggml.eot_token_id"),
                opt_u32("tokenizer.ggml.eom_token_id"),
            ]
            .into_iter()
            .flatten(),
        );
        Ok(Self {
            bos: bos_id.zip(name_of(bos_id)),
            eos: name_of(eos_id),
            eos_ids,
            pad_id: opt_u32("tokenizer.ggml.padding_token_id"),
            add_bos: opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
            add_eos: opt_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
            chat_template: md
                .get("tokenizer.chat_template")
                .and_then(|v| v.to_string().ok())
                .cloned(),
            inner,
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) are matched whole.
    /// With `add_special`, BOS / EOS are added as the model's tokenizer does (the `tokenizer.json`
    /// post-processor, or GGUF `add_bos_token` / `add_eos_token`); prompts that went through a chat
    /// template already contain them: use `false`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| PolicyError::input("text", e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos_id());
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos_ids.first().copied());
        }
        Ok(ids)
    }

    /// Text of `ids`; with `skip_special`, special tokens (BOS, `<|im_end|>`, ...) are dropped.
    /// Errors with [`PolicyError::Input`] on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let size = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(PolicyError::input(
                "token ids",
                format!("id {bad} is outside the vocabulary (size {size})"),
            ));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| PolicyError::input("token ids", e.to_string()))
    }

    /// The ids that end a generation (e.g. `[2]` for SmolLM2's `<|im_end|>`; Llama 3 has several).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(id, _)| *id)
    }

    /// The BOS token text (`bos_token` in chat templates).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(_, t)| t.as_str())
    }

    /// The (first) EOS token text (`eos_token` in chat templates).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    /// The padding id, if the model names one (callers usually fall back to the first EOS id).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The Jinja chat template source, if the model ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template compiled with this tokenizer's `bos_token` / `eos_token`.
    /// Errors with [`PolicyError::Config`] (`field = "chat_template"`) when there is none or it
    /// does not compile.
    pub fn chat(&self) -> Result<ChatTemplate> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            PolicyError::config("chat_template", "the tokenizer has no chat template")
        })?;
        ChatTemplate::new(source, self.bos_token().unwrap_or(""), self.eos_token().unwrap_or(""))
    }

    /// Renders `messages` with the model's chat template (see [`ChatTemplate::render`]).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat()?.render(messages, add_generation_prompt)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers` tokenizer (e.g. to save it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` into `dir` (the GGUF-built tokenizer becomes a regular HF file).
    pub fn save_tokenizer_json(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let path = dir.as_ref().join("tokenizer.json");
        self.inner.save(&path, false).map_err(|e| corrupt(&path, e))?;
        Ok(path)
    }
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value (see [`GGUF_PRE_TOKENIZERS`]).
fn gguf_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    // ids only depend on the split; offsets are trimmed like the models' own tokenizer.json.
    let gpt2 = || ByteLevel::new(false, true, true).into();
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| PolicyError::config("tokenizer.ggml.pre", e.to_string()))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    match pre {
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), gpt2()]).into())
        }
        "gpt-2" => Ok(gpt2()),
        "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" => split_then_bytes(LLAMA3_SPLIT),
        other => Err(PolicyError::config(
            "tokenizer.ggml.pre",
            format!(
                "pre-tokenizer `{other}` is not supported (supported: {})",
                GGUF_PRE_TOKENIZERS.join(", ")
            ),
        )),
    }
}

impl crate::TextCodec for Tokenizer {
    /// `encode(text, false)`: prompts are already templated.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text, false)
    }

    /// `decode(ids, true)`: special tokens removed.
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Tokenizer::decode(self, ids, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection_onto_gpt2_chars() {
        let table = byte_alphabet();
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[usize::from(b' ')], 'Ġ');
        assert_eq!(table[usize::from(b'\n')], 'Ċ');
        assert_eq!(table[usize::from(b'A')], 'A');
    }

    #[test]
    fn unknown_pre_tokenizer_is_a_config_error() {
        let err = gguf_pre_tokenizer("mystery").unwrap_err();
        assert!(
            matches!(err, PolicyError::Config { ref field, .. } if field == "tokenizer.ggml.pre"),
            "{err}"
        );
        for pre in GGUF_PRE_TOKENIZERS {
            assert!(gguf_pre_tokenizer(pre).is_ok(), "{pre}");
        }
    }
}
