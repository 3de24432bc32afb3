//! Golden values **and gradients** against the PyTorch transcription of verl / TRL / oat in
//! `scripts/reference/loss_reference.py` (fixture `tests/fixtures/losses.json`, regenerate with
//! `scripts/.venv/bin/python scripts/reference/loss_reference.py`).

use candle_core::{Device, Tensor, Var};
use rl_core::{PolicyLoss, PolicyLossInput, ValueLoss, ValueLossInput};
use rl_loss::{
    Aggregation, ClippedValueLoss, GspoLoss, KlLoss, PolicyLossConfig, PpoLoss, TruncatedIs,
    entropy_from_logits,
};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/losses.json")).unwrap()
}

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn flat(v: &Value) -> Vec<f64> {
    fn go(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| go(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut out = Vec::new();
    go(v, &mut out);
    out
}

fn close(name: &str, what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * w.abs().max(1.0), "{name}: {what}[{i}] = {g}, torch {w}");
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
}

fn cases(kind: &str) -> Vec<Value> {
    let f = fixture();
    let all = f["cases"].as_array().unwrap().clone();
    let v: Vec<Value> = all.into_iter().filter(|c| c["kind"] == kind).collect();
    assert!(!v.is_empty(), "no {kind} case");
    v
}

#[test]
fn policy_losses_match_torch() {
    let mut n = 0;
    for c in cases("policy") {
        let name = c["name"].as_str().unwrap();
        let loss: PolicyLossConfig = serde_json::from_value(c["config"].clone()).unwrap();
        let i = &c["inputs"];
        let lp = Var::from_tensor(&t2(&i["log_probs"])).unwrap();
        let (old, adv, mask) = (t2(&i["old_log_probs"]), t2(&i["advantages"]), t2(&i["mask"]));
        let isw = i.get("rollout_is_weights").map(t2);
        let ids: Option<Vec<usize>> =
            i.get("group_ids").map(|g| serde_json::from_value(g.clone()).unwrap());
        let mut input = PolicyLossInput::new(&lp, &old, &adv, &mask);
        input.rollout_is_weights = isw.as_ref();
        input.group_ids = ids.as_deref();
        let out = loss.compute(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        close(name, "loss", &values(&out.loss), &[c["loss"].as_f64().unwrap()], 1e-5);
        let g = out.loss.backward().unwrap();
        close(name, "grad", &values(g.get(&lp).unwrap()), &flat(&c["grad"]), 1e-5);
        for (k, v) in c["metrics"].as_object().unwrap() {
            let got = out.metrics.get(k).unwrap_or_else(|| panic!("{name}: metric {k} missing"));
            close(name, k, &[got], &[v.as_f64().unwrap()], 1e-5);
        }
        n += 1;
    }
    assert!(n >= 19, "{n} policy cases");
}

#[test]
fn value_loss_matches_torch() {
    for c in cases("value") {
        let name = c["name"].as_str().unwrap();
        let loss: ClippedValueLoss = serde_json::from_value(c["config"].clone()).unwrap();
        let i = &c["inputs"];
        let v = Var::from_tensor(&t2(&i["values"])).unwrap();
        let (old, ret, mask) = (t2(&i["old_values"]), t2(&i["returns"]), t2(&i["mask"]));
        let input = ValueLossInput {
            values: &v,
            old_values: &old,
            returns: &ret,
            response_mask: &mask,
            counts: None,
        };
        let out = loss.compute(&input).unwrap();
        close(name, "loss", &values(&out.loss), &[c["loss"].as_f64().unwrap()], 1e-5);
        let g = out.loss.backward().unwrap();
        close(name, "grad", &values(g.get(&v).unwrap()), &flat(&c["grad"]), 1e-5);
        let want = c["metrics"]["clipfrac"].as_f64().unwrap();
        close(name, "clipfrac", &[out.metrics.get("clipfrac").unwrap()], &[want], 1e-6);
    }
}

#[test]
fn kl_estimators_match_torch_including_straight_through() {
    for c in cases("kl") {
        let name = c["name"].as_str().unwrap();
        let loss: KlLoss = serde_json::from_value(c["config"].clone()).unwrap();
        let i = &c["inputs"];
        let lp = Var::from_tensor(&t2(&i["log_probs"])).unwrap();
        let (rf, mask) = (t2(&i["ref_log_probs"]), t2(&i["mask"]));
        let out = loss.compute(&lp, &rf, &mask, None, None).unwrap();
        close(name, "loss", &values(&out.loss), &[c["loss"].as_f64().unwrap()], 1e-5);
        let g = out.loss.backward().unwrap();
        close(name, "grad", &values(g.get(&lp).unwrap()), &flat(&c["grad"]), 1e-5);
        let pen = loss.kl.penalty(&lp, &rf, &mask).unwrap();
        close(name, "penalty", &values(&pen), &flat(&c["values"]), 1e-5);
    }
}

#[test]
fn truncated_is_weights_match_torch() {
    for c in cases("tis") {
        let name = c["name"].as_str().unwrap();
        let tis: TruncatedIs = serde_json::from_value(c["config"].clone()).unwrap();
        let i = &c["inputs"];
        let (w, m) =
            tis.weights(&t2(&i["log_probs"]), &t2(&i["old_log_probs"]), &t2(&i["mask"])).unwrap();
        close(name, "weights", &values(&w), &flat(&c["weights"]), 1e-5);
        assert!(m.get("is_weight_mean").unwrap() > 0.0);
    }
}

#[test]
fn entropy_matches_torch() {
    let c = &cases("entropy")[0];
    let z: Vec<Vec<Vec<f32>>> = serde_json::from_value(c["inputs"]["logits"].clone()).unwrap();
    let (b, t, v) = (z.len(), z[0].len(), z[0][0].len());
    let zt = Tensor::from_vec(z.concat().concat(), (b, t, v), &Device::Cpu).unwrap();
    let z = Var::from_tensor(&zt).unwrap();
    let up = t2(&c["inputs"]["upstream"]);
    for h in
        [entropy_from_logits(&z).unwrap(), rl_loss::entropy_from_logits_chunked(&z, 2).unwrap()]
    {
        close("entropy", "values", &values(&h), &flat(&c["values"]), 1e-5);
        let g = (h * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close("entropy", "grad", &values(g.get(&z).unwrap()), &flat(&c["grad"]), 1e-5);
    }
}

/// TRL's `luspo` aggregation (`scripts/reference/loss_luspo.py`, fixture `tests/fixtures/luspo.json`):
/// token-level ratio with [`rl_loss::Aggregation::Luspo`], and TRL's sequence-level form through
/// GSPO with `seq_sum_token_sum_norm` (`scale = B`).
#[test]
fn luspo_matches_torch() {
    let f: Value = serde_json::from_str(include_str!("fixtures/luspo.json")).unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let i = &c["inputs"];
        let lp = Var::from_tensor(&t2(&i["log_probs"])).unwrap();
        let (old, adv, mask) = (t2(&i["old_log_probs"]), t2(&i["advantages"]), t2(&i["mask"]));
        // Built here from the formulas, and checked against the fixture's recipe spelling below.
        let clip = |k: &str| c["config"][k].as_f64().unwrap();
        let (clip_low, clip_high) = (clip("clip_low"), clip("clip_high"));
        let loss: PolicyLossConfig = match name {
            "luspo_token_level" => {
                PpoLoss { clip_low, clip_high, dual_clip: None, aggregation: Aggregation::Luspo }
                    .into()
            }
            "luspo_sequence_level" => {
                let rows = mask.dims()[0] as f64;
                let aggregation = Aggregation::SeqSumTokenSumNorm { scale: Some(rows) };
                GspoLoss { clip_low, clip_high, aggregation }.into()
            }
            other => panic!("unknown luspo case {other}"),
        };
        let parsed: PolicyLossConfig = serde_json::from_value(c["config"].clone()).unwrap();
        assert_eq!(parsed, loss, "{name}: the fixture's config spelling");
        let out = loss.compute(&PolicyLossInput::new(&lp, &old, &adv, &mask)).unwrap();
        close(name, "loss", &values(&out.loss), &[c["loss"].as_f64().unwrap()], 1e-5);
        let g = out.loss.backward().unwrap();
        close(name, "grad", &values(g.get(&lp).unwrap()), &flat(&c["grad"]), 1e-5);
    }
}
