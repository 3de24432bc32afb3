//! Tokenizer and template tests against the golden fixtures written by
//! `scripts/reference/policy_golden.py` (transformers 5.23) and the real SmolLM2 GGUF file
//! (fetched by `scripts/fetch_smollm2.sh`; the tests fail, not skip, when it cannot be obtained).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use proptest::prelude::*;
use rl_policy::PolicyError;
use rl_policy::template::{ChatMessage, ChatTemplate, PromptTemplate};
use rl_policy::tokenizer::Tokenizer;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| fixture("smollm2_golden.json"))
}

fn gguf_content() -> gguf_file::Content {
    let path =
        rl_policy::testing_assets::smollm2_gguf().expect("SmolLM2 GGUF (scripts/fetch_smollm2.sh)");
    let mut file = std::fs::File::open(&path).expect("open GGUF");
    gguf_file::Content::read(&mut file).expect("read GGUF header")
}

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf(&gguf_content()).expect("tokenizer from GGUF"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn text(v: &Value) -> &str {
    v.as_str().expect("string")
}

#[test]
fn gguf_ids_match_golden_tokenizer_cases() -> TestResult {
    let tok = smollm2();
    let cases = golden()["tokenizer_cases"].as_array().expect("tokenizer_cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let t = text(&case["text"]);
        assert_eq!(tok.encode(t, false)?, ids(&case["ids"]), "text {t:?}");
        // GGUF says add_bos_token = false: adding special tokens changes nothing.
        assert_eq!(tok.encode(t, true)?, ids(&case["ids"]), "text {t:?}");
    }
    // The known divergences of transformers' GGUF loader are recorded, and we differ from it there.
    let diverging: Vec<&str> = cases
        .iter()
        .filter(|c| c.get("transformers_gguf_ids").is_some())
        .map(|c| text(&c["text"]))
        .collect();
    assert!(diverging.contains(&"  99 bottles"), "{diverging:?}");
    Ok(())
}

#[test]
fn qwen2_and_llama3_splits_match_transformers() -> TestResult {
    // SmolLM2's vocabulary with another `tokenizer.ggml.pre`: checks the split regexes.
    let cases = golden()["pre_tokenizer_cases"].as_object().expect("pre_tokenizer_cases");
    assert_eq!(cases.len(), 2);
    for (pre, cases) in cases {
        let mut content = gguf_content();
        content.metadata.insert("tokenizer.ggml.pre".into(), gguf_file::Value::String(pre.clone()));
        let tok = Tokenizer::from_gguf(&content)?;
        for case in cases.as_array().expect("cases") {
            let t = text(&case["text"]);
            assert_eq!(tok.encode(t, false)?, ids(&case["ids"]), "pre {pre}, text {t:?}");
        }
    }
    Ok(())
}

#[test]
fn gguf_ids_match_model_cases() -> TestResult {
    let tok = smollm2();
    for case in golden()["cases"].as_array().expect("cases") {
        assert_eq!(
            tok.encode(text(&case["text"]), false)?,
            ids(&case["input_ids"]),
            "{}",
            case["name"]
        );
    }
    Ok(())
}

#[test]
fn decode_round_trips_and_skips_special_tokens() -> TestResult {
    let tok = smollm2();
    for case in golden()["tokenizer_cases"].as_array().expect("tokenizer_cases") {
        assert_eq!(tok.decode(&ids(&case["ids"]), false)?, text(&case["text"]));
    }
    let chat = text(&golden()["chat_template_cases"][0]["rendered"]);
    let plain = tok.decode(&tok.encode(chat, false)?, true)?;
    assert!(!plain.contains("<|im_start|>") && !plain.contains("<|im_end|>"), "{plain:?}");
    assert!(plain.contains("What is 12+34?"), "{plain:?}");
    // The chat-template text encodes its markers as single special ids.
    let chat_ids = tok.encode(chat, false)?;
    assert_eq!(chat_ids[0], tok.token_to_id("<|im_start|>").expect("<|im_start|>"));
    Ok(())
}

#[test]
fn special_ids_match_transformers() {
    let tok = smollm2();
    let special = &golden()["special_ids"];
    assert_eq!(tok.bos_id().map(u64::from), special["bos"].as_u64());
    assert_eq!(tok.eos_ids().first().copied().map(u64::from), special["eos"].as_u64());
    assert_eq!(tok.pad_id().map(u64::from), special["pad"].as_u64());
    assert_eq!(tok.eos_ids(), [2]);
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.vocab_size(), 49152);
}

#[test]
fn decode_rejects_out_of_vocabulary_ids() {
    let err = smollm2().decode(&[1780, 49152], false).unwrap_err();
    assert!(matches!(err, PolicyError::Input { .. }), "{err}");
}

#[test]
fn gguf_chat_template_matches_transformers() -> TestResult {
    let tok = smollm2();
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
    for case in golden()["chat_template_cases"].as_array().expect("chat_template_cases") {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone())?;
        let add = case["add_generation_prompt"].as_bool().expect("bool");
        assert_eq!(
            tok.apply_chat_template(&messages, add)?,
            text(&case["rendered"]),
            "{}",
            case["name"]
        );
    }
    Ok(())
}

#[test]
fn hf_dir_round_trip_keeps_ids_and_reads_special_tokens() -> TestResult {
    let gguf = smollm2();
    let dir = std::env::temp_dir().join(format!("rlz-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    gguf.save_tokenizer_json(&dir)?;
    let template = gguf.chat_template().expect("template");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({
            "bos_token": "<|im_start|>",
            "eos_token": {"content": "<|im_end|>", "special": true},
            "pad_token": "<|endoftext|>",
            "chat_template": template,
        })
        .to_string(),
    )?;
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 0], "bos_token_id": 1}"#,
    )?;
    let hf = Tokenizer::from_hf_dir(&dir);
    std::fs::remove_dir_all(&dir)?;
    let hf = hf?;
    for case in golden()["tokenizer_cases"].as_array().expect("tokenizer_cases") {
        assert_eq!(hf.encode(text(&case["text"]), false)?, ids(&case["ids"]));
    }
    assert_eq!(hf.eos_ids(), [2, 0]);
    assert_eq!(hf.bos_id(), Some(1));
    assert_eq!(hf.pad_id(), Some(0));
    assert_eq!(hf.eos_token(), Some("<|im_end|>"));
    let case = &golden()["chat_template_cases"][0];
    let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone())?;
    assert_eq!(hf.apply_chat_template(&messages, true)?, text(&case["rendered"]));
    Ok(())
}

#[test]
fn hf_dir_without_tokenizer_json_is_missing_file() {
    let err = Tokenizer::from_hf_dir(std::env::temp_dir().join("rlz-no-such-dir")).unwrap_err();
    assert!(matches!(err, PolicyError::MissingFile { .. }), "{err}");
}

#[test]
fn unsupported_gguf_tokenizers_are_config_errors() {
    let set = |key: &str, value: &str| {
        let mut content = gguf_content();
        content.metadata.insert(key.to_owned(), gguf_file::Value::String(value.to_owned()));
        Tokenizer::from_gguf(&content).unwrap_err()
    };
    for (key, value) in [("tokenizer.ggml.pre", "mystery"), ("tokenizer.ggml.model", "llama")] {
        let err = set(key, value);
        assert!(matches!(&err, PolicyError::Config { field, .. } if field == key), "{err}");
        assert!(err.to_string().contains(value), "{err}");
    }
    let mut content = gguf_content();
    content.metadata.remove("tokenizer.ggml.merges");
    let err = Tokenizer::from_gguf(&content).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Config { field, .. } if field == "tokenizer.ggml.merges"),
        "{err}"
    );
}

#[test]
fn chat_template_matches_transformers_renderer() -> TestResult {
    let parity = fixture("chat_template_parity.json");
    let chat = ChatTemplate::new(text(&parity["template"]), "<s>", "</s>")?;
    for case in parity["cases"].as_array().expect("cases") {
        let extra = case["extra"].as_object().expect("extra");
        let add = case["add_generation_prompt"].as_bool().expect("bool");
        let got = chat.render_json(&case["messages"], add, extra);
        match case.get("rendered") {
            Some(want) => assert_eq!(got?, text(want), "{}", case["name"]),
            None => {
                let err = got.unwrap_err();
                assert!(matches!(err, PolicyError::Input { .. }), "{err}");
                assert!(err.to_string().contains(text(&case["error"])), "{err}");
            }
        }
    }
    Ok(())
}

#[test]
fn chat_template_syntax_error_is_config_error() {
    let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(matches!(&err, PolicyError::Config { field, .. } if field == "chat_template"), "{err}");
    let chat = ChatTemplate::new("{{ messages }}", "", "").expect("compiles");
    let err = chat
        .render_json(&serde_json::json!({"role": "user"}), false, &serde_json::Map::new())
        .unwrap_err();
    assert!(matches!(err, PolicyError::Input { .. }), "{err}");
}

#[test]
fn prompt_templates_match_reference_texts() {
    let cases = fixture("prompt_templates.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 10);
    for case in cases {
        let template: PromptTemplate =
            serde_json::from_value(case["template"].clone()).expect("template name");
        let got = template.apply(text(&case["question"]), text(&case["bos_token"]));
        assert_eq!(got, text(&case["prompt"]), "{template}");
    }
}

#[test]
fn prompt_template_names_and_stop_strings() -> TestResult {
    use std::str::FromStr;
    for t in PromptTemplate::ALL {
        assert_eq!(PromptTemplate::from_str(t.name())?, t);
        assert_eq!(serde_json::to_value(t)?, Value::String(t.name().to_owned()));
        assert_eq!(
            serde_json::from_value::<PromptTemplate>(Value::String(t.name().to_owned()))?,
            t
        );
    }
    assert_eq!(PromptTemplate::from_str("orz")?, PromptTemplate::OpenReasonerZero);
    assert_eq!(serde_json::from_str::<PromptTemplate>("\"no\"")?, PromptTemplate::None);
    assert_eq!(
        PromptTemplate::OpenReasonerZero.stop_strings(),
        ["User:", "Human:", "Assistant:", "</answer>"]
    );
    assert_eq!(PromptTemplate::R1.stop_strings(), ["</answer>"]);
    assert!(
        PromptTemplate::QwenMath.stop_strings().is_empty()
            && PromptTemplate::None.stop_strings().is_empty()
    );
    let err = PromptTemplate::from_str("chatml").unwrap_err();
    assert!(
        matches!(&err, PolicyError::Config { field, .. } if field == "prompt_template"),
        "{err}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Byte-level BPE is lossless: any text decodes back to itself.
    #[test]
    fn any_text_round_trips(s in "\\PC{0,40}|[0-9 \\t\\n.+-]{0,30}") {
        let tok = smollm2();
        let ids = tok.encode(&s, false).expect("encode");
        prop_assert_eq!(tok.decode(&ids, false).expect("decode"), s.clone());
        prop_assert!(ids.len() <= s.len());
    }
}
