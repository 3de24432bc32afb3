//! `rl_trainer::plot`: reading metrics JSONL back and drawing `curves.svg`.

use std::path::Path;

use proptest::prelude::*;
use rl_trainer::TrainerError;
use rl_trainer::plot::{self, MetricsHistory, render_svg};

/// Five training steps (the reward of step 2 is `null`, i.e. was NaN), evaluations at steps 0, 3
/// and 5 on their own lines, a blank line, and fields the plot ignores.
const RUN: &str = r#"{"step":0,"eval/accuracy":0.2,"eval/mean_reward":0.2,"eval/responses":8.0,"eval/greedy":1.0}
{"step":1,"reward/mean":0.1,"reward/accuracy":0.1,"response/length_mean":10.0,"time/step_s":1.5}
{"step":2,"reward/mean":null,"reward/accuracy":0.2,"response/length_mean":11.0,"note":"ignored"}
{"step":3,"reward/mean":0.4,"reward/accuracy":0.4,"response/length_mean":12.0}
{"step":3,"eval/accuracy":0.5,"eval/greedy":1.0}

{"step":4,"reward/mean":0.5,"reward/accuracy":0.5,"response/length_mean":9.0}
{"step":5,"reward/mean":0.6,"reward/accuracy":0.6,"response/length_mean":8.0}
{"step":5,"eval/accuracy":0.7,"eval/greedy":1.0}
"#;

// Stroke colours of the curves (tab10), as plotters writes them.
const REWARD: &str = "#1F77B4";
const ACCURACY: &str = "#2CA02C";
const EVAL: &str = "#D62728";
const LENGTH: &str = "#9467BD";

/// The value of attribute `name` in the tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// The points of every `<polyline>` stroked with `color`, in document order.
fn polylines(svg: &str, color: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .map(|rest| &rest[..rest.find("/>").expect("unterminated polyline")])
        .filter(|tag| attr(tag, "stroke") == Some(color))
        .map(|tag| {
            attr(tag, "points")
                .expect("polyline without points")
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').expect("point is x,y");
                    (x.parse().expect("x"), y.parse().expect("y"))
                })
                .collect()
        })
        .collect()
}

fn metrics_error(e: TrainerError) -> (std::path::PathBuf, Option<usize>, String) {
    match e {
        TrainerError::Metrics { path, line, reason } => (path, line, reason),
        other => panic!("expected TrainerError::Metrics, got {other:?}"),
    }
}

#[test]
fn reads_merges_steps_and_skips_non_finite_values() {
    let h = MetricsHistory::parse(RUN, "metrics.jsonl").unwrap();
    assert_eq!(h.len(), 6);
    assert_eq!(h.series("reward/mean"), [(1, 0.1), (3, 0.4), (4, 0.5), (5, 0.6)]);
    assert_eq!(h.series("reward/accuracy").len(), 5);
    assert_eq!(h.series("eval/accuracy"), [(0, 0.2), (3, 0.5), (5, 0.7)]);
    assert_eq!(h.get(3, "reward/mean"), Some(0.4), "train and eval lines of step 3 merge");
    assert_eq!(h.get(2, "note"), None);
    // A repeated step (a resumed run) keeps the later value.
    let h = MetricsHistory::parse(
        "{\"step\":1,\"reward/mean\":0.1}\n{\"step\":1,\"reward/mean\":0.3}",
        "m",
    )
    .unwrap();
    assert_eq!(h.series("reward/mean"), [(1, 0.3)]);
}

#[test]
fn svg_has_one_curve_per_series_with_one_point_per_finite_value() {
    let svg = render_svg(&MetricsHistory::parse(RUN, "metrics.jsonl").unwrap()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    for label in [
        "training curves (metrics.jsonl)",
        "reward and accuracy",
        "train reward (mean)",
        "train accuracy",
        "held-out accuracy (greedy)",
        "mean response length",
        "step",
    ] {
        assert!(svg.contains(&format!("\n{label}\n")), "no text {label:?}");
    }
    // Each top-panel curve: its line, then its 2-point legend sample; the lone lower-panel curve
    // has no legend.
    let counts = |c| polylines(&svg, c).iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(counts(REWARD), [4, 2], "the null reward of step 2 is skipped");
    assert_eq!(counts(ACCURACY), [5, 2]);
    assert_eq!(counts(EVAL), [3, 2]);
    assert_eq!(counts(LENGTH), [5]);
    let markers = svg
        .split("<circle")
        .skip(1)
        .filter(|rest| attr(&rest[..rest.find("/>").unwrap()], "fill") == Some(EVAL))
        .count();
    assert_eq!(markers, 3, "one marker per evaluation");

    // Steps increase to the right, and a higher value is drawn higher (smaller y).
    let reward = &polylines(&svg, REWARD)[0];
    assert!(reward.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1), "{reward:?}");
    // Both panels share the x axis: step 1 is at the same x in both.
    let length = &polylines(&svg, LENGTH)[0];
    assert_eq!(reward[0].0, length[0].0);
    assert!(length.iter().all(|p| p.1 > reward.iter().map(|r| r.1).fold(0.0, f64::max)));
}

#[test]
fn single_panel_and_single_point_runs_render() {
    // Only the evaluation before training: one point, no length panel, no NaN coordinates.
    let h = MetricsHistory::parse(r#"{"step":0,"eval/accuracy":0.25}"#, "m.jsonl").unwrap();
    let svg = render_svg(&h).unwrap();
    assert!(!svg.contains("mean response length") && !svg.contains("NaN"));
    assert_eq!(svg.matches("<circle").count(), 1);
    // Only lengths: the lower panel alone. The title names the run's directory.
    let text = "{\"step\":3,\"response/length_mean\":7}";
    let h = MetricsHistory::parse(text, "/r/runs/dr_grpo/metrics.jsonl").unwrap();
    let svg = render_svg(&h).unwrap();
    assert!(svg.contains("mean response length") && !svg.contains("reward and accuracy"));
    assert!(svg.contains("\ntraining curves (dr_grpo/metrics.jsonl)\n"));
    // Rewards outside [0, 1] widen the axis instead of leaving the plot.
    let text = "{\"step\":1,\"reward/mean\":-4.0}\n{\"step\":2,\"reward/mean\":9.0}";
    let svg = render_svg(&MetricsHistory::parse(text, "m").unwrap()).unwrap();
    let (w, h) = (960.0, 480.0);
    let line = &polylines(&svg, REWARD)[0];
    assert!(line.iter().all(|&(x, y)| (0.0..w).contains(&x) && (0.0..h).contains(&y)), "{line:?}");
}

#[test]
fn plot_run_writes_curves_svg_next_to_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    std::fs::write(&metrics, RUN).unwrap();
    assert_eq!(plot::curves_path(&metrics), dir.path().join(plot::CURVES_FILE));
    let svg = plot::plot_run(&metrics).unwrap();
    assert_eq!(svg, dir.path().join("curves.svg"));
    let doc = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(doc, render_svg(&MetricsHistory::read(&metrics).unwrap()).unwrap());
    // Elsewhere, creating the directory.
    let other = dir.path().join("plots/run.svg");
    plot::write_curves_svg(&metrics, &other).unwrap();
    assert!(std::fs::read_to_string(other).unwrap().starts_with("<svg"));
}

#[test]
fn an_empty_or_missing_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let e = MetricsHistory::read(&path).unwrap_err();
        assert!(e.to_string().contains(name) && e.to_string().contains("empty"), "{e}");
        let (p, line, _) = metrics_error(e);
        assert_eq!((p, line), (path.clone(), None));
        // The whole pipeline says the same and writes nothing.
        assert!(matches!(plot::plot_run(&path), Err(TrainerError::Metrics { line: None, .. })));
        assert!(!plot::curves_path(&path).exists());
    }
    let missing = dir.path().join("missing.jsonl");
    let (_, line, reason) = metrics_error(MetricsHistory::read(&missing).unwrap_err());
    assert!(line.is_none() && reason.contains("cannot read"), "{reason}");
    // Lines, but nothing the plot draws.
    let h = MetricsHistory::parse("{\"step\":1,\"time/step_s\":2.0,\"reward/mean\":null}", "m")
        .unwrap();
    let (_, line, reason) = metrics_error(render_svg(&h).unwrap_err());
    assert!(line.is_none() && reason.contains("nothing to plot"), "{reason}");
}

#[test]
fn a_malformed_line_is_an_error_naming_the_line() {
    let ok = "{\"step\":1,\"reward/mean\":0.5}\n\n";
    for (bad, why) in [
        ("{\"step\":2,\"reward/mean\":0.", "invalid JSON"), // truncated (a killed run)
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, found an array"),
        ("{\"reward/mean\":0.5}", "no `step`"),
        ("{\"step\":-1}", "non-negative integer"),
        ("{\"step\":1.5}", "non-negative integer"),
        ("{\"step\":\"3\"}", "non-negative integer"),
    ] {
        let text = format!("{ok}{bad}\n{ok}");
        let e = MetricsHistory::parse(&text, Path::new("runs/x/metrics.jsonl")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("metrics file runs/x/metrics.jsonl line 3: "), "{msg}");
        let (_, line, reason) = metrics_error(e);
        assert_eq!(line, Some(3), "{bad}");
        assert!(reason.contains(why), "{bad}: {reason}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary text, and arbitrary values in well-formed lines, give a history or an error,
    /// never a panic; whatever parses renders (or reports nothing to plot).
    #[test]
    fn never_panics(
        text in ".{0,200}",
        values in prop::collection::vec((0u64..50, prop::option::of(-1e6f64..1e6)), 0..20),
    ) {
        let _ = MetricsHistory::parse(&text, "m");
        let lines: Vec<String> = values
            .iter()
            .map(|(s, v)| {
                let v = v.map_or("null".to_string(), |v| v.to_string());
                format!("{{\"step\":{s},\"reward/mean\":{v},\"eval/accuracy\":{v}}}")
            })
            .collect();
        match MetricsHistory::parse(&lines.join("\n"), "m") {
            Ok(h) => match render_svg(&h) {
                Ok(svg) => prop_assert!(svg.starts_with("<svg") && !svg.contains("NaN")),
                Err(e) => {
                    let whole_file = matches!(e, TrainerError::Metrics { line: None, .. });
                    prop_assert!(whole_file, "{e}");
                }
            },
            Err(e) => prop_assert!(values.is_empty(), "{e}"),
        }
    }
}
