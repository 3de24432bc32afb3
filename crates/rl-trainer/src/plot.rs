//! Training curves: reads back a metrics JSONL file written by [`MetricsLog`](crate::MetricsLog)
//! and draws it as an SVG (`curves.svg` next to `metrics.jsonl` at the end of a run).
//!
//! The upper panel shows, against the step, the training reward mean (`reward/mean`), the
//! training accuracy (`reward/accuracy`) and the held-out accuracy (`eval/accuracy`, one point per
//! evaluation, written by [`Trainer::evaluate`](crate::Trainer::evaluate)); the lower panel, when
//! the file has it, the mean response length (`response/length_mean`). Lines for the same step
//! are merged (a later value of a metric replaces an earlier one, as after a resumed run); `null`
//! and other non-finite values, and non-numeric fields, are skipped.
//!
//! Text is written as plain SVG `<text>` (plotters without its font features): no font
//! library or system font is needed to draw, and the viewer picks a sans-serif font.
//!
//! ```
//! use rl_trainer::plot::{MetricsHistory, render_svg};
//! let jsonl = r#"{"step": 0, "eval/accuracy": 0.25}
//! {"step": 1, "reward/mean": 0.5, "reward/accuracy": 0.5, "response/length_mean": 12.0}
//! {"step": 2, "reward/mean": 0.75, "reward/accuracy": 0.75, "response/length_mean": 10.0}
//! {"step": 2, "eval/accuracy": 0.5}"#;
//! let history = MetricsHistory::parse(jsonl, "metrics.jsonl")?;
//! assert_eq!(history.series("eval/accuracy"), [(0, 0.25), (2, 0.5)]);
//! let svg = render_svg(&history)?;
//! assert!(svg.starts_with("<svg") && svg.contains("train reward (mean)"));
//!
//! let err = MetricsHistory::parse("{\"step\": 1}\nnot json", "m.jsonl").unwrap_err();
//! assert!(err.to_string().starts_with("metrics file m.jsonl line 2:"), "{err}");
//! # Ok::<(), rl_trainer::TrainerError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::{Result, TrainerError};

/// File name of the curves written next to the metrics file ([`plot_run`]).
pub const CURVES_FILE: &str = "curves.svg";

/// Metric drawn as the training reward curve.
pub const REWARD: &str = "reward/mean";
/// Metric drawn as the training accuracy curve.
pub const ACCURACY: &str = "reward/accuracy";
/// Metric drawn as the held-out accuracy points (written by `Trainer::evaluate`).
pub const EVAL_ACCURACY: &str = "eval/accuracy";
/// `1` when the evaluation of that step was greedy, `0` when it sampled.
pub const EVAL_GREEDY: &str = "eval/greedy";
/// Metric drawn on the lower panel.
pub const RESPONSE_LENGTH: &str = "response/length_mean";

const WIDTH: u32 = 960;
const TOP_HEIGHT: u32 = 480;
const BOTTOM_HEIGHT: u32 = 260;
const FONT: &str = "sans-serif";

/// The metrics of a run, one map of finite values per step, read back from a metrics JSONL file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsHistory {
    source: PathBuf,
    steps: BTreeMap<u64, BTreeMap<String, f64>>,
}

impl MetricsHistory {
    /// Reads a metrics JSONL file (see [`MetricsHistory::parse`]).
    ///
    /// # Errors
    /// [`TrainerError::Metrics`] when the file cannot be read, or as [`MetricsHistory::parse`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::Metrics {
            path: path.to_path_buf(),
            line: None,
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses metrics JSONL text: one JSON object per line with a non-negative integer `step`
    /// and numeric metrics. Blank lines are ignored; lines of the same step are merged (later
    /// values win); `null` and non-finite values and non-numeric fields are skipped. `source`
    /// names the file in errors.
    ///
    /// # Errors
    /// [`TrainerError::Metrics`] naming the line for a line that is not JSON, not an object or
    /// has no valid `step`, and with `line: None` for text with no metrics line at all.
    pub fn parse(text: &str, source: impl Into<PathBuf>) -> Result<Self> {
        let source = source.into();
        let err = |line: Option<usize>, reason: String| TrainerError::Metrics {
            path: source.clone(),
            line,
            reason,
        };
        let mut steps: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = Some(i + 1);
            if line.trim().is_empty() {
                continue;
            }
            let obj = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(obj)) => obj,
                Ok(other) => {
                    return Err(err(n, format!("expected a JSON object, found {}", kind(&other))));
                }
                Err(e) => return Err(err(n, format!("invalid JSON: {e}"))),
            };
            let step = match obj.get("step") {
                Some(v) => v.as_u64().ok_or_else(|| {
                    err(n, format!("`step` must be a non-negative integer, found {v}"))
                })?,
                None => return Err(err(n, "no `step` field".into())),
            };
            let row = steps.entry(step).or_default();
            for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "step") {
                if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                    row.insert(k.clone(), x);
                }
            }
        }
        if steps.is_empty() {
            return Err(err(None, "no metrics (the file is empty)".into()));
        }
        Ok(Self { source, steps })
    }

    /// The file (or name) the metrics were read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Number of distinct steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// `true` when no step was read (never for a parsed history).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The value of metric `name` at `step`, if finite and present.
    pub fn get(&self, step: u64, name: &str) -> Option<f64> {
        self.steps.get(&step)?.get(name).copied()
    }

    /// `(step, value)` of every step that has a finite value of `name`, in step order.
    pub fn series(&self, name: &str) -> Vec<(u64, f64)> {
        self.steps.iter().filter_map(|(&s, row)| row.get(name).map(|&v| (s, v))).collect()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One curve of a panel.
struct Curve {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// Line width in pixels.
    width: u32,
    /// Draw a marker at every point (evaluations: few, and a single one must show).
    markers: bool,
}

impl Curve {
    fn new(label: impl Into<String>, points: Vec<(u64, f64)>, color: RGBColor) -> Self {
        let points = points.into_iter().map(|(s, v)| (s as f64, v)).collect();
        Self { label: label.into(), points, color, width: 2, markers: false }
    }
}

/// Draws `history` as an SVG document: reward / accuracy curves on top and, when
/// `response/length_mean` is present, the mean response length below. Curves whose metric is
/// absent are left out (and out of the legend).
///
/// # Errors
/// [`TrainerError::Metrics`] when none of the plotted metrics has a finite value;
/// [`TrainerError::Plot`] when drawing fails.
pub fn render_svg(history: &MetricsHistory) -> Result<String> {
    let eval = history.series(EVAL_ACCURACY);
    let greedy = eval.iter().all(|&(s, _)| history.get(s, EVAL_GREEDY).is_none_or(|g| g != 0.0));
    let eval_label = if greedy { "held-out accuracy (greedy)" } else { "held-out accuracy" };
    let mut eval = Curve::new(eval_label, eval, RGBColor(214, 39, 40));
    eval.markers = true;
    // With a 0/1 reward the mean is the accuracy: the reward is drawn wide underneath, so both
    // stay visible where they coincide.
    let mut reward =
        Curve::new("train reward (mean)", history.series(REWARD), RGBColor(31, 119, 180));
    reward.width = 5;
    let top: Vec<Curve> = [
        reward,
        Curve::new("train accuracy", history.series(ACCURACY), RGBColor(44, 160, 44)),
        eval,
    ]
    .into_iter()
    .filter(|c| !c.points.is_empty())
    .collect();
    let bottom: Vec<Curve> = [Curve::new(
        "mean response length (tokens)",
        history.series(RESPONSE_LENGTH),
        RGBColor(148, 103, 189),
    )]
    .into_iter()
    .filter(|c| !c.points.is_empty())
    .collect();
    if top.is_empty() && bottom.is_empty() {
        return Err(TrainerError::Metrics {
            path: history.source.clone(),
            line: None,
            reason: format!(
                "nothing to plot: no finite {REWARD}, {ACCURACY}, {EVAL_ACCURACY} or {RESPONSE_LENGTH}"
            ),
        });
    }
    // One x range for both panels, so their steps line up.
    let steps = top.iter().chain(&bottom).flat_map(|c| c.points.iter().map(|p| p.0));
    let x = padded(steps, 0.01);

    let height = match (top.is_empty(), bottom.is_empty()) {
        (false, false) => TOP_HEIGHT + BOTTOM_HEIGHT,
        (false, true) => TOP_HEIGHT,
        (true, _) => BOTTOM_HEIGHT + 40,
    };
    // The run is usually named by the metrics file's directory: `runs/dr_grpo/metrics.jsonl`.
    let name: Vec<_> = (history.source.components().rev())
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .take(2)
        .collect();
    let title = match name.as_slice() {
        [] => "training curves".into(),
        [file] => format!("training curves ({})", file.to_string_lossy()),
        [file, dir, ..] => {
            format!("training curves ({}/{})", dir.to_string_lossy(), file.to_string_lossy())
        }
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        draw(&root, &title, &top, &bottom, x).map_err(|e| TrainerError::Plot {
            path: history.source.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(svg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    top: &[Curve],
    bottom: &[Curve],
    x: (f64, f64),
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 24))?;
    let (upper, lower) = if top.is_empty() || bottom.is_empty() {
        (body.clone(), body)
    } else {
        body.split_vertically(TOP_HEIGHT as i32 - 30)
    };
    if !top.is_empty() {
        // Accuracies live in [0, 1]; rewards may leave it (negative penalties, scaled rewards).
        let values = top.iter().flat_map(|c| c.points.iter().map(|p| p.1));
        let y = padded(values.chain([0.0, 1.0]), 0.05);
        panel(&upper, "reward and accuracy", "value", top, x, y)?;
    }
    if !bottom.is_empty() {
        let values = bottom.iter().flat_map(|c| c.points.iter().map(|p| p.1));
        let y = padded(values.chain([0.0]), 0.05);
        panel(&lower, "mean response length", "tokens", bottom, x, y)?;
    }
    root.present()
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    curves: &[Curve],
    x: (f64, f64),
    y: (f64, f64),
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    // Steps are integers: at most one label per step, so none is a repeated rounded value.
    let x_labels = ((x.1 - x.0).round() as usize + 1).clamp(2, 11);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .x_labels(x_labels)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for c in curves {
        let style = c.color.stroke_width(c.width);
        chart
            .draw_series(LineSeries::new(c.points.iter().copied(), style))?
            .label(c.label.as_str())
            .legend(move |(lx, ly)| PathElement::new([(lx, ly), (lx + 20, ly)], style));
        if c.markers {
            chart.draw_series(c.points.iter().map(|&p| Circle::new(p, 4, c.color.filled())))?;
        }
    }
    if curves.len() < 2 {
        // The caption names a lone curve.
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT, 16))
        .draw()
}

/// `(lo, hi)` covering `values` with a margin of `pad` times their span on each side; a single
/// value (or none) gets a unit-wide range, so the range is never empty.
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) =
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    (lo - span * pad, hi + span * pad)
}

/// Reads `metrics` and writes its curves to `svg` (parent directories are created).
///
/// # Errors
/// As [`MetricsHistory::read`] and [`render_svg`]; [`TrainerError::Plot`] when `svg` cannot be
/// written.
pub fn write_curves_svg(metrics: impl AsRef<Path>, svg: impl AsRef<Path>) -> Result<()> {
    let svg = svg.as_ref();
    let doc = render_svg(&MetricsHistory::read(metrics)?)?;
    let write = || -> std::io::Result<()> {
        if let Some(parent) = svg.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(svg, doc)
    };
    write().map_err(|e| TrainerError::Plot {
        path: svg.to_path_buf(),
        reason: format!("cannot write: {e}"),
    })
}

/// Where [`plot_run`] writes the curves of `metrics`: [`CURVES_FILE`] in the same directory.
pub fn curves_path(metrics: impl AsRef<Path>) -> PathBuf {
    metrics.as_ref().with_file_name(CURVES_FILE)
}

/// Writes the curves of a run's metrics file to [`curves_path`] (`curves.svg` next to it) and
/// returns that path.
///
/// # Errors
/// As [`write_curves_svg`].
pub fn plot_run(metrics: impl AsRef<Path>) -> Result<PathBuf> {
    let svg = curves_path(&metrics);
    write_curves_svg(metrics, &svg)?;
    Ok(svg)
}
