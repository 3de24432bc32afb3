//! Golden tests against `scripts/reference/reward_overlong.py` (DAPO overlong shaping as in verl's
//! `dapo.py` reward manager, ORZ outcome reward).

use rl_core::{FinishReason, RewardFn, Sample};
use rl_reward::{OrzReward, OverlongPenalty};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/overlong.json")).expect("valid fixture")
}

#[test]
fn overlong_matches_reference() -> rl_core::Result<()> {
    let f = fixture();
    let cases = f["overlong"].as_array().expect("cases");
    assert!(cases.len() > 20);
    for c in cases {
        let p = OverlongPenalty {
            max_len: c["max_len"].as_u64().expect("max_len") as usize,
            buffer: c["buffer"].as_u64().expect("buffer") as usize,
            factor: c["factor"].as_f64().expect("factor") as f32,
        };
        let mut s = Sample::new("", "");
        s.response_tokens = c["L"].as_u64().expect("L") as usize;
        let want = c["penalty"].as_f64().expect("penalty");
        let got = p.score(&s)? as f64;
        assert!((got - want).abs() < 1e-6, "{c}: got {got}");
    }
    Ok(())
}

#[test]
fn orz_matches_reference() -> rl_core::Result<()> {
    for c in fixture()["orz"].as_array().expect("cases") {
        let correct = c["correct"].as_bool().expect("correct");
        let mut s = Sample::new(if correct { "\\boxed{7}" } else { "\\boxed{8}" }, "7");
        s.finish = if c["stopped"].as_bool().expect("stopped") {
            FinishReason::Eos
        } else {
            FinishReason::Length
        };
        assert_eq!(
            OrzReward::default().score(&s)? as f64,
            c["reward"].as_f64().expect("reward"),
            "{c}"
        );
    }
    Ok(())
}
