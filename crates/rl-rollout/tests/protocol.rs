//! Request builders, response parsers and validators against recorded / transcribed engine
//! answers (provenance in `tests/fixtures/README.md`), and the serde configs.

use rl_core::{FinishReason, SamplingConfig};
use rl_rollout::protocol::{
    Expect, Origin, RawChoice, parse_llama_cpp, parse_sglang, parse_vllm, validate_choice,
};
use rl_rollout::{
    Engine, GenRequest, RolloutConfig, RolloutError, WeightSyncConfig, build_request,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const O: Origin<'static> = Origin { url: "http://mock", request: "prompt 0" };
const PROMPT: [u32; 12] = [1780, 314, 216, 35, 39, 1232, 216, 36, 40, 47, 19842, 42];

fn expect(eos: &[u32]) -> Expect<'_> {
    Expect { prompt: &PROMPT, max_tokens: 32, vocab_size: 49152, eos_ids: eos }
}

fn field_of(e: RolloutError) -> String {
    match e {
        RolloutError::Response { field, .. } => field,
        other => panic!("expected a Response error, got {other}"),
    }
}

#[test]
fn vllm_real_response_parses_and_validates() {
    let body = fixture("vllm_0.32.0_completion.json");
    let c = parse_vllm(&body, 1, 32, &O).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].token_ids, vec![2]);
    assert_eq!(c[0].finish, FinishReason::Eos);
    assert_eq!(c[0].prompt_echo.as_deref(), Some(&PROMPT[..]));
    let lp = validate_choice(&c[0], &expect(&[2]), "choices[0]", &O).unwrap();
    assert!((lp[0] - -0.268_581_7).abs() < 1e-6);
    // The same answer is wrong for a trainer whose EOS is another id.
    let e = validate_choice(&c[0], &expect(&[0]), "choices[0]", &O).unwrap_err();
    assert_eq!(field_of(e), "choices[0].finish_reason");
    // n mismatch.
    assert_eq!(field_of(parse_vllm(&body, 2, 32, &O).unwrap_err()), "choices");
}

fn vllm_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut body = fixture("vllm_0.32.0_completion.json");
    edit(&mut body["choices"][0]);
    body
}

#[test]
fn vllm_bad_answers_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (
            vllm_with(|c| c["logprobs"]["token_logprobs"] = json!([null])),
            "choices[0].logprobs.token_logprobs[0]",
        ),
        (vllm_with(|c| c["logprobs"] = Value::Null), "choices[0].logprobs"),
        (vllm_with(|c| c["token_ids"] = Value::Null), "choices[0].token_ids"),
        (vllm_with(|c| c["token_ids"] = json!([-3])), "choices[0].token_ids[0]"),
        (vllm_with(|c| c["finish_reason"] = json!("eos")), "choices[0].finish_reason"),
        (vllm_with(|c| c["index"] = json!(1)), "choices[0].index"),
        (vllm_with(|c| c["stop_reason"] = json!(1.5)), "choices[0].stop_reason"),
        (vllm_with(|c| c["token_ids"] = json!(vec![5; 33])), "choices[0].token_ids"),
    ];
    for (body, field) in cases {
        assert_eq!(field_of(parse_vllm(&body, 1, 32, &O).unwrap_err()), field, "{body}");
    }
}

fn choice(ids: &[u32], lps: &[f64], finish: FinishReason) -> RawChoice {
    RawChoice {
        token_ids: ids.to_vec(),
        log_probs: lps.to_vec(),
        finish,
        prompt_echo: Some(PROMPT.to_vec()),
        stop_token: None,
    }
}

#[test]
fn validation_rejects_sentinels_oov_shifted_prompts_and_early_eos() {
    let ok = choice(&[5, 2], &[-0.5, -0.1], FinishReason::Eos);
    validate_choice(&ok, &expect(&[2]), "c", &O).unwrap();
    let bad = [
        (choice(&[5, 2], &[-9999.0, -0.1], FinishReason::Eos), "c.log_probs[0]"),
        (choice(&[5, 2], &[-0.5, f64::NAN], FinishReason::Eos), "c.log_probs[1]"),
        (choice(&[5, 2], &[0.5, -0.1], FinishReason::Eos), "c.log_probs[0]"),
        (choice(&[5, 2], &[-0.5], FinishReason::Eos), "c.log_probs"),
        (choice(&[60000, 2], &[-0.5, -0.1], FinishReason::Eos), "c.token_ids[0]"),
        (choice(&[2, 5], &[-0.5, -0.1], FinishReason::Length), "c.token_ids[0]"),
        (choice(&[5, 6], &[-0.5, -0.1], FinishReason::Eos), "c.finish_reason"),
    ];
    for (c, field) in bad {
        assert_eq!(field_of(validate_choice(&c, &expect(&[2]), "c", &O).unwrap_err()), field);
    }
    let mut shifted = ok.clone();
    shifted.prompt_echo = Some(std::iter::once(1).chain(PROMPT).collect());
    let e = validate_choice(&shifted, &expect(&[2]), "c", &O).unwrap_err();
    assert_eq!(field_of(e), "c.prompt_token_ids");
    // Aborted and length-truncated rows are valid answers, with their own finish reason.
    let aborted = choice(&[5], &[-0.5], FinishReason::Aborted);
    validate_choice(&aborted, &expect(&[2]), "c", &O).unwrap();
    assert!(!aborted.finish.stopped());
}

#[test]
fn sglang_transcribed_answer_parses() {
    let body = fixture("sglang_generate_n2.json");
    let c = parse_sglang(&body, 2, 8, &O).unwrap();
    assert_eq!(c[0].token_ids, vec![604, 2]);
    assert_eq!(c[0].finish, FinishReason::Eos);
    assert_eq!(c[0].stop_token, Some(2));
    assert_eq!(c[1].finish, FinishReason::Length);
    assert_eq!(c[1].log_probs, vec![-2.5, -1.25, -0.75]);
    let single = body[0].clone();
    assert_eq!(parse_sglang(&single, 1, 8, &O).unwrap().len(), 1);
    let mut bad = body.clone();
    bad[1]["output_ids"] = json!([1862, 28, 12]);
    assert_eq!(field_of(parse_sglang(&bad, 2, 8, &O).unwrap_err()), "[1].output_ids");
    let mut bad = body;
    bad[0]["meta_info"]["output_token_logprobs"][1][0] = Value::Null;
    assert_eq!(
        field_of(parse_sglang(&bad, 2, 8, &O).unwrap_err()),
        "[0].meta_info.output_token_logprobs[1][0]"
    );
}

#[test]
fn llama_cpp_transcribed_answer_parses() {
    let body = fixture("llama_cpp_completion.json");
    let c = parse_llama_cpp(&body, 8, &O).unwrap();
    assert_eq!(c.token_ids, vec![604, 2]);
    assert_eq!(c.finish, FinishReason::Eos);
    let mut trunc = body.clone();
    trunc["truncated"] = json!(true);
    assert_eq!(field_of(parse_llama_cpp(&trunc, 8, &O).unwrap_err()), "truncated");
    let mut bad = body;
    bad["stop_type"] = json!("none");
    assert_eq!(field_of(parse_llama_cpp(&bad, 8, &O).unwrap_err()), "stop_type");
}

#[test]
fn requests_carry_every_sampling_field() {
    let cfg = SamplingConfig {
        temperature: 0.7,
        top_p: 0.9,
        top_k: Some(20),
        min_p: 0.05,
        max_new_tokens: 64,
        n: 4,
        seed: u64::MAX,
        stop: vec!["</answer>".into()],
    };
    let req = GenRequest {
        model: "m",
        prompt: &[3, 4],
        n: 4,
        config: &cfg,
        seed: u64::MAX,
        eos_ids: &[2],
    };
    let v = build_request(Engine::Vllm, &req);
    assert_eq!(v["seed"], json!(i64::MAX), "vLLM seeds are int64");
    assert_eq!(v["top_k"], 20);
    assert_eq!(v["stop_token_ids"], json!([2]));
    assert_eq!(v["include_stop_str_in_output"], true);
    assert_eq!(v["return_token_ids"], true);
    let s = build_request(Engine::Sglang, &req);
    assert_eq!(s["input_ids"], json!([3, 4]));
    assert_eq!(s["sampling_params"]["no_stop_trim"], true);
    assert_eq!(s["return_logprob"], true);
    let l = build_request(Engine::LlamaCpp, &req);
    assert_eq!(l["n_probs"], 1);
    assert_eq!(l["post_sampling_probs"], false);
    assert_eq!(l["cache_prompt"], false);
    assert_eq!(l["top_k"], 20);
    let greedy = SamplingConfig::greedy(8);
    let req = GenRequest { config: &greedy, ..req };
    assert_eq!(build_request(Engine::Vllm, &req)["top_k"], -1);
    assert_eq!(build_request(Engine::LlamaCpp, &req)["top_k"], 0);
}

#[test]
fn configs_are_typed_and_validated_with_paths() {
    let ok: RolloutConfig = serde_json::from_value(json!({
        "type": "llama_cpp", "urls": ["http://a:1", "http://b:2"], "max_concurrency": 2
    }))
    .unwrap();
    ok.validate("rollout").unwrap();
    let local: RolloutConfig = serde_json::from_value(json!({"type": "local"})).unwrap();
    assert_eq!(local, RolloutConfig::Local);
    assert!(
        serde_json::from_value::<RolloutConfig>(json!({"type": "vllm", "urls": [], "bogus": 1}))
            .is_err()
    );
    assert!(serde_json::from_value::<RolloutConfig>(json!({"type": "tgi"})).is_err());
    let bad: RolloutConfig =
        serde_json::from_value(json!({"type": "vllm", "urls": ["http://a:1", "a:2"]})).unwrap();
    let e = bad.validate("rollout").unwrap_err();
    assert!(
        matches!(e, RolloutError::Config { ref field, .. } if field == "rollout.urls[1]"),
        "{e}"
    );
    let bad: RolloutConfig = serde_json::from_value(
        json!({"type": "sglang", "urls": ["http://a"], "max_concurrency": 0}),
    )
    .unwrap();
    let e = bad.validate("x").unwrap_err();
    assert!(
        matches!(e, RolloutError::Config { ref field, .. } if field == "x.max_concurrency"),
        "{e}"
    );
    let sync: WeightSyncConfig =
        serde_json::from_value(json!({"type": "disk", "dir": "/tmp/w", "dtype": "int8"})).unwrap();
    let e = sync.validate("weight_sync").unwrap_err();
    assert!(
        matches!(e, RolloutError::Config { ref field, .. } if field == "weight_sync.dtype"),
        "{e}"
    );
    let nccl: WeightSyncConfig = serde_json::from_value(json!({"type": "nccl"})).unwrap();
    assert_eq!(nccl, WeightSyncConfig::Nccl(rl_rollout::StreamSyncConfig::default()));
    nccl.validate("weight_sync").unwrap();
    for (field, body) in [
        ("weight_sync.listen", json!({"type": "tcp", "listen": "host-without-port"})),
        ("weight_sync.advertise", json!({"type": "tcp", "advertise": "no-port"})),
        ("weight_sync.sync_every", json!({"type": "tcp", "sync_every": 0})),
        ("weight_sync.connect_timeout_s", json!({"type": "nccl", "connect_timeout_s": 1e9})),
        ("weight_sync.dtype", json!({"type": "nccl", "dtype": "fp8"})),
    ] {
        let sync: WeightSyncConfig = serde_json::from_value(body).unwrap();
        let e = sync.validate("weight_sync").unwrap_err();
        assert!(matches!(e, RolloutError::Config { field: ref f, .. } if f == field), "{e}");
    }
    assert!(
        serde_json::from_value::<WeightSyncConfig>(json!({"type": "tcp", "dir": "w"})).is_err()
    );
    assert!(
        serde_json::from_value::<WeightSyncConfig>(json!({"type": "disk", "dir": "w", "x": 1}))
            .is_err()
    );
}
