//! Bad input is a typed error (never NaN, never a panic); configs fail at parse time; the
//! documented singleton / zero-variance behaviour of each estimator.

use rl_advantage::{
    Advantage, BatchStd, DrGrpo, Gae, Gpg, Grpo, GrpoPassK, Opo, OptimalTokenBaseline, ReMax, Rloo,
    Singleton, Whiten,
};
use rl_core::{AdvantageEstimator, AdvantageInput, Device, Error, PolicyStats, Rewards, Tensor};

fn t2(v: &[&[f32]]) -> Tensor {
    let (b, t) = (v.len(), v[0].len());
    Tensor::from_vec(v.concat(), (b, t), &Device::Cpu).unwrap()
}

fn seq(s: &[f32]) -> Rewards {
    Rewards::from_scores(s, &Device::Cpu).unwrap()
}

fn every() -> Vec<Advantage> {
    Advantage::builtins()
}

fn run(
    est: &dyn AdvantageEstimator,
    r: &Rewards,
    mask: &Tensor,
    ids: &[usize],
) -> rl_core::Result<Vec<Vec<f32>>> {
    let values = Tensor::zeros(mask.dims(), rl_core::DType::F32, &Device::Cpu)?;
    let baseline = Tensor::zeros(mask.dims()[0], rl_core::DType::F32, &Device::Cpu)?;
    let log_probs = (values.ones_like()? * -0.5)?;
    let sum_pi_squared = (values.ones_like()? * 0.4)?;
    let stats =
        PolicyStats { log_probs: &log_probs, sum_pi_squared: &sum_pi_squared, is_weights: None };
    let input = AdvantageInput::new(r, mask, ids)
        .with_values(&values)
        .with_baseline(&baseline)
        .with_policy_stats(stats);
    Ok(est.estimate(&input)?.advantages.to_vec2()?)
}

#[test]
fn non_finite_rewards_are_typed_errors() {
    let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    for est in every() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let r = seq(&[1.0, bad]);
            assert!(
                matches!(run(&est, &r, &mask, &[0, 0]), Err(Error::NonFinite { index: 1, .. })),
                "{est:?}"
            );
        }
        let tok = Rewards::Token(t2(&[&[0.0, 1.0], &[f32::NAN, 0.0]]));
        assert!(
            matches!(run(&est, &tok, &mask, &[0, 0]), Err(Error::NonFinite { index: 2, .. })),
            "{est:?}"
        );
    }
}

#[test]
fn group_ids_must_match_the_batch() {
    let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    for est in every() {
        let r = seq(&[1.0, 0.0]);
        assert!(
            matches!(
                run(&est, &r, &mask, &[0, 0, 0]),
                Err(Error::GroupMismatch { expected: 2, got: 3 })
            ),
            "{est:?}"
        );
        assert!(matches!(run(&est, &r, &mask, &[0]), Err(Error::GroupMismatch { .. })), "{est:?}");
    }
}

#[test]
fn mismatched_shapes_are_typed_errors() {
    let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    for est in every() {
        assert!(matches!(
            run(&est, &seq(&[1.0, 0.0, 1.0]), &mask, &[0, 0]),
            Err(Error::ShapeMismatch { .. })
        ));
        let tok = Rewards::Token(t2(&[&[0.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]));
        assert!(
            matches!(run(&est, &tok, &mask, &[0, 0]), Err(Error::ShapeMismatch { .. })),
            "{est:?}"
        );
        let flat = Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap();
        assert!(matches!(
            run(&est, &seq(&[1.0, 0.0]), &flat, &[0, 0]),
            Err(Error::ShapeMismatch { .. })
        ));
    }
    let r = seq(&[1.0, 0.0]);
    let wrong = Tensor::zeros((2, 3), rl_core::DType::F32, &Device::Cpu).unwrap();
    let input = AdvantageInput::new(&r, &mask, &[0, 0]).with_values(&wrong).with_baseline(&wrong);
    assert!(matches!(Gae::default().estimate(&input), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(ReMax::default().estimate(&input), Err(Error::ShapeMismatch { .. })));
    // missing inputs
    let bare = AdvantageInput::new(&r, &mask, &[0, 0]);
    assert!(matches!(Gae::default().estimate(&bare), Err(Error::Empty { .. })));
    assert!(matches!(ReMax::default().estimate(&bare), Err(Error::Empty { .. })));
    let otb = OptimalTokenBaseline::default();
    assert!(matches!(otb.estimate(&bare), Err(Error::Empty { .. })));
    let stats = PolicyStats { log_probs: &wrong, sum_pi_squared: &wrong, is_weights: None };
    assert!(matches!(
        otb.estimate(&bare.with_policy_stats(stats)),
        Err(Error::ShapeMismatch { .. })
    ));
    // non-finite values on a valid token (NaN on padding is ignored)
    let nan_pad = t2(&[&[0.0, 0.0], &[0.0, f32::NAN]]);
    assert!(Gae::default().estimate(&bare.with_values(&nan_pad)).is_ok());
    let nan_valid = t2(&[&[0.0, f32::NAN], &[0.0, 0.0]]);
    assert!(matches!(
        Gae::default().estimate(&bare.with_values(&nan_valid)),
        Err(Error::NonFinite { index: 1, .. })
    ));
    // a mask must be 0/1 where an estimator reads lengths
    let half = t2(&[&[1.0, 0.5], &[1.0, 0.0]]);
    match run(&Opo::default(), &r, &half, &[0, 0]) {
        Err(Error::InvalidMask { what, row: 0, col: 1, value }) => {
            assert_eq!((what.as_str(), value), ("response_mask", 0.5));
        }
        other => panic!("expected InvalidMask at (0, 1), got {other:?}"),
    }
}

#[test]
fn empty_rows_fail_only_where_a_length_is_needed() {
    let mask = t2(&[&[1.0, 1.0], &[0.0, 0.0]]);
    let r = seq(&[1.0, 0.0]);
    for est in
        [Advantage::opo(), Advantage::ppo(), Advantage::reinforce_plus_plus(), Advantage::remax()]
    {
        assert!(matches!(run(&est, &r, &mask, &[0, 0]), Err(Error::Empty { .. })), "{est:?}");
    }
    // outcome estimators without a length: the empty row just has no token to hold its advantage
    for est in [Advantage::grpo(), Advantage::dr_grpo(), Advantage::rloo(), Advantage::gpg()] {
        let a = run(&est, &r, &mask, &[0, 0]).unwrap();
        assert_eq!(a[1], vec![0.0, 0.0], "{est:?}");
    }
    // token-level rewards need no placement: GAE over an empty row is zero
    let tok = Rewards::Token(t2(&[&[0.0, 1.0], &[0.0, 0.0]]));
    assert_eq!(run(&Advantage::ppo(), &tok, &mask, &[0, 0]).unwrap()[1], vec![0.0, 0.0]);
    // whitening needs two valid tokens (unbiased) in the whole batch
    let one = t2(&[&[1.0, 0.0]]);
    assert!(matches!(
        run(&Advantage::ppo(), &seq(&[1.0]), &one, &[0]),
        Err(Error::InsufficientData { needed: 2, .. })
    ));
    let orz = Gae::open_reasoner_zero();
    assert_eq!(run(&orz, &seq(&[1.0]), &one, &[0]).unwrap(), vec![vec![0.0, 0.0]]);
}

#[test]
fn singleton_and_zero_variance_groups_are_documented_values() {
    // group 4: singleton (r = 2); group 9: all equal (0.5); group 1: {1, 0}
    let mask = t2(&[&[1.0], &[1.0], &[1.0], &[1.0], &[1.0]]);
    let r = seq(&[2.0, 0.5, 0.5, 1.0, 0.0]);
    let ids = [4, 9, 9, 1, 1];
    let col = |est: &dyn AdvantageEstimator| {
        run(est, &r, &mask, &ids).unwrap().iter().map(|x| x[0]).collect::<Vec<_>>()
    };
    let g = col(&Grpo::default());
    assert_eq!(g[0], (2.0f64 / (1.0 + 1e-6)) as f32);
    assert_eq!(&g[1..3], &[0.0, 0.0]);
    assert_eq!(col(&Grpo { singleton: Singleton::Zero, ..Grpo::default() })[0], 0.0);
    // eps = 0 never divides 0 by 0
    assert_eq!(&col(&Grpo { eps: 0.0, ..Grpo::default() })[1..3], &[0.0, 0.0]);
    assert_eq!(col(&DrGrpo::default())[..3], [2.0, 0.0, 0.0]);
    assert_eq!(col(&Rloo::default())[..3], [2.0, 0.0, 0.0]);
    assert_eq!(col(&Rloo { singleton: Singleton::Zero })[0], 0.0);
    assert_eq!(col(&Opo::default())[..3], [2.0, 0.0, 0.0]);
    assert_eq!(col(&Gpg::default())[..3], [2.0 * 5.0 / 4.0, 0.0, 0.0]);
    assert_eq!(col(&BatchStd::default())[..3], [0.0, 0.0, 0.0]);
    assert!(matches!(
        run(&GrpoPassK::default(), &r, &mask, &ids),
        Err(Error::InsufficientData { needed: 2, got: 1, .. })
    ));
    let pk = run(&GrpoPassK::default(), &r, &mask, &[9, 9, 9, 1, 1]).unwrap();
    assert_eq!(pk[1][0], 0.0); // loser
    assert!(pk[0][0] > 0.0 && pk[3][0] > 0.0 && pk[4][0] == 0.0);
}

#[test]
fn invalid_configs_are_rejected() {
    let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
    let r = seq(&[1.0, 0.0]);
    let bad: Vec<Box<dyn AdvantageEstimator>> = vec![
        Box::new(Grpo { eps: -1.0, ..Grpo::default() }),
        Box::new(Grpo { std_floor: Some(f64::NAN), ..Grpo::default() }),
        Box::new(Gae { gamma: 1.5, ..Gae::default() }),
        Box::new(Gae { lambda: -0.1, ..Gae::default() }),
        Box::new(BatchStd { eps: f64::INFINITY, ..BatchStd::default() }),
        Box::new(rl_advantage::ReinforcePlusPlus { gamma: 2.0, whiten: Whiten::None }),
        Box::new(OptimalTokenBaseline { epsilon: -1.0, ..OptimalTokenBaseline::default() }),
        Box::new(OptimalTokenBaseline { epsilon: f64::NAN, ..OptimalTokenBaseline::default() }),
    ];
    for est in bad {
        assert!(matches!(run(est.as_ref(), &r, &mask, &[0, 0]), Err(Error::Config { .. })));
    }
}

#[test]
fn config_parsing_fails_early_and_lists_names() {
    let err = toml::from_str::<Advantage>(r#"type = "grpoo""#).unwrap_err().to_string();
    for name in [
        "gae",
        "grpo",
        "dr_grpo",
        "batch_std",
        "rloo",
        "reinforce_plus_plus_baseline",
        "remax",
        "opo",
        "gpg",
        "grpo_passk",
        "optimal_token_baseline",
    ] {
        assert!(err.contains(name), "{err}");
    }
    assert!(toml::from_str::<Advantage>("type = \"grpo\"\nepsilon = 1e-4").is_err());
    assert!(serde_json::from_str::<Advantage>(r#"{"type": "gae", "lam": 0.9}"#).is_err());
    assert!(serde_json::from_str::<Advantage>(r#"{"type": "grpo", "std": "population"}"#).is_err());
    let a: Advantage = toml::from_str("type = \"grpo\"\neps = 1e-4\nsingleton = \"zero\"").unwrap();
    assert_eq!(a, Advantage::trl_grpo());
    let g: Advantage = serde_json::from_str(r#"{"type": "gae", "whiten": "population"}"#).unwrap();
    assert_eq!(g, Advantage::open_reasoner_zero());
}

#[test]
fn every_preset_round_trips_through_toml_and_json() {
    let mut presets = Advantage::builtins();
    presets.extend([
        Advantage::ppo(),
        Advantage::open_reasoner_zero(),
        Advantage::trl_grpo(),
        Advantage::oat_grpo(),
        Advantage::openrlhf_group_norm(),
        Advantage::dapo(),
        Advantage::Grpo(Grpo::verl_vectorized()),
        Advantage::Gae(Gae::trl()),
        OptimalTokenBaseline { handle_zero_tail: true, epsilon: 1e-6 }.into(),
    ]);
    for p in presets {
        let t = toml::to_string(&p).unwrap();
        assert_eq!(toml::from_str::<Advantage>(&t).unwrap(), p, "{t}");
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Advantage>(&j).unwrap(), p, "{j}");
    }
    assert!(Advantage::default().requires_values());
    assert!(!Advantage::grpo().requires_values());
}
