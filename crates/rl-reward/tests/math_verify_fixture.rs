//! Agreement with the expected verdicts of Math-Verify's own test suite (transcribed into
//! `tests/fixtures/math_verify_cases.json` by `scripts/reference/reward_mathverify_fixture.py`).
//! Run with `--nocapture` to see the rate, the timings and the cases still wrong.

use std::time::Instant;

use rl_reward::math::{MathVerifier, VerifyConfig};
use serde_json::Value;

/// The agreement measured when this test was written, minus a hair. Never lower it.
const MIN_AGREEMENT: f64 = 0.973;

fn cases() -> Vec<Value> {
    let text = include_str!("fixtures/math_verify_cases.json");
    let v: Value = serde_json::from_str(text).expect("valid fixture");
    v["cases"].as_array().expect("cases").clone()
}

fn verifier(case: &Value) -> MathVerifier {
    let float_rounding = case["precision"].as_u64().map(|p| p as u32);
    MathVerifier::new(VerifyConfig {
        float_rounding,
        accept_unevaluated: true,
        ..VerifyConfig::default()
    })
}

#[test]
fn agreement_with_math_verify_suite() {
    let cases = cases();
    assert!(cases.len() > 200, "fixture has {} cases", cases.len());
    let mut agree = 0;
    let mut times = Vec::with_capacity(cases.len());
    let mut wrong = Vec::new();
    for c in &cases {
        let (gold, pred) = (c["gold"].as_str().expect("gold"), c["pred"].as_str().expect("pred"));
        let expected = c["expected"].as_bool().expect("expected");
        let v = verifier(c);
        let t = Instant::now();
        let verdict = v.check(gold, pred);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if verdict.correct == expected {
            agree += 1;
        } else {
            wrong.push(format!(
                "  [{}::{}] expected {expected}: gold={gold:?} pred_extracted={:?}",
                c["source"].as_str().unwrap_or(""),
                c["test"].as_str().unwrap_or(""),
                verdict.extracted
            ));
        }
    }
    times.sort_by(f64::total_cmp);
    let rate = agree as f64 / cases.len() as f64;
    println!("Math-Verify fixture agreement: {agree}/{} = {:.2}%", cases.len(), rate * 100.0);
    println!(
        "time per pair (debug build): median {:.3} ms, worst {:.3} ms",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!("cases still wrong ({}):\n{}", wrong.len(), wrong.join("\n"));
    assert!(rate >= MIN_AGREEMENT, "agreement {rate:.4} fell below {MIN_AGREEMENT}");
}
