//! Named scalar metrics returned by every stage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the values of one metric from several parts of a batch (micro-batches) combine into the
/// value of the whole batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduce {
    /// A per-part token mean (clip fraction, approx KL, ratio mean): the parts are averaged,
    /// weighted by their valid tokens. The default.
    #[default]
    Mean,
    /// A part's share of a batch-normalised total (a loss divided by the mini-batch's token
    /// count): the parts are summed.
    Sum,
    /// The smallest value of any part.
    Min,
    /// The largest value of any part.
    Max,
}

/// Named scalars (clip fraction, approx KL, reward mean, ...), sorted by name, each with the
/// [`Reduce`] that combines it over micro-batches.
///
/// Every stage returns its metrics in one of these; the trainer merges them with a prefix
/// (`"actor/"`, `"critic/"`, `"reward/"`) and writes one JSON object per step (values only).
///
/// ```
/// use rl_core::{Metrics, metrics::Reduce};
/// let mut m = Metrics::new();
/// m.insert("clipfrac", 0.25);
/// m.insert_with("loss", 0.5, Reduce::Sum);
/// let mut all = Metrics::new();
/// all.extend_prefixed("actor/", &m);
/// assert_eq!(all.get("actor/clipfrac"), Some(0.25));
/// assert_eq!(all.reduction("actor/loss"), Reduce::Sum);
/// assert_eq!(serde_json::to_string(&m)?, r#"{"clipfrac":0.25,"loss":0.5}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    values: BTreeMap<String, f64>,
    /// Entries that do not [`Reduce::Mean`].
    reductions: BTreeMap<String, Reduce>,
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.values.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Metrics {
    /// Values only (as written); every entry reads back as [`Reduce::Mean`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self { values: BTreeMap::deserialize(d)?, reductions: BTreeMap::new() })
    }
}

impl Metrics {
    /// An empty set of metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value` (replacing any previous value), reduced by [`Reduce::Mean`].
    pub fn insert(&mut self, name: impl Into<String>, value: f64) {
        self.insert_with(name, value, Reduce::Mean);
    }

    /// Sets `name` to `value` with its reduction over micro-batches.
    pub fn insert_with(&mut self, name: impl Into<String>, value: f64, reduce: Reduce) {
        let name = name.into();
        if reduce == Reduce::Mean {
            self.reductions.remove(&name);
        } else {
            self.reductions.insert(name.clone(), reduce);
        }
        self.values.insert(name, value);
    }

    /// Builder-style [`Metrics::insert`].
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.insert(name, value);
        self
    }

    /// Builder-style [`Metrics::insert_with`].
    pub fn with_reduce(mut self, name: impl Into<String>, value: f64, reduce: Reduce) -> Self {
        self.insert_with(name, value, reduce);
        self
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// How `name` combines over micro-batches ([`Reduce::Mean`] unless set otherwise).
    pub fn reduction(&self, name: &str) -> Reduce {
        self.reductions.get(name).copied().unwrap_or_default()
    }

    /// Copies every entry of `other` (with its reduction) into `self`, with `prefix` prepended
    /// to its name.
    pub fn extend_prefixed(&mut self, prefix: &str, other: &Metrics) {
        for (k, v) in other.iter() {
            self.insert_with(format!("{prefix}{k}"), v, other.reduction(k));
        }
    }

    /// Iterates over `(name, value)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// `true` when there are no metrics.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Combines the metrics of the parts of one batch (micro-batches), each given with its
    /// number of valid tokens, by each metric's [`Reduce`]: the result equals what one pass over
    /// the whole batch would report.
    ///
    /// ```
    /// use rl_core::{Metrics, metrics::Reduce};
    /// let a = Metrics::new().with("clipfrac", 0.5).with_reduce("loss", 1.0, Reduce::Sum);
    /// let b = Metrics::new().with("clipfrac", 0.0).with_reduce("loss", 2.0, Reduce::Sum);
    /// let m = Metrics::merge_parts(&[(a, 3.0), (b, 1.0)]);
    /// assert_eq!(m.get("clipfrac"), Some(0.375)); // token-weighted
    /// assert_eq!(m.get("loss"), Some(3.0));
    /// ```
    pub fn merge_parts(parts: &[(Metrics, f64)]) -> Metrics {
        let mut acc: BTreeMap<&str, (f64, f64, Reduce)> = BTreeMap::new();
        for (m, tokens) in parts {
            for (k, v) in m.iter() {
                let reduce = m.reduction(k);
                let e = acc.entry(k).or_insert(match reduce {
                    Reduce::Min => (f64::INFINITY, 0.0, reduce),
                    Reduce::Max => (f64::NEG_INFINITY, 0.0, reduce),
                    Reduce::Sum | Reduce::Mean => (0.0, 0.0, reduce),
                });
                match reduce {
                    Reduce::Min => e.0 = e.0.min(v),
                    Reduce::Max => e.0 = e.0.max(v),
                    Reduce::Sum => e.0 += v,
                    Reduce::Mean => {
                        e.0 += v * tokens;
                        e.1 += tokens;
                    }
                }
            }
        }
        let mut out = Metrics::new();
        for (k, (v, w, reduce)) in acc {
            out.insert_with(k, if w > 0.0 { v / w } else { v }, reduce);
        }
        out
    }

    /// Element-wise mean over several metric sets (e.g. over micro-batches). A name missing from
    /// some sets is averaged over the sets that have it.
    /// Each name keeps the reduction of the first set that has it.
    pub fn mean(sets: &[Metrics]) -> Metrics {
        let mut sums: BTreeMap<&str, (f64, usize, Reduce)> = BTreeMap::new();
        for set in sets {
            for (k, v) in set.iter() {
                let e = sums.entry(k).or_insert((0.0, 0, set.reduction(k)));
                e.0 += v;
                e.1 += 1;
            }
        }
        let mut out = Metrics::new();
        for (k, (s, n, reduce)) in sums {
            out.insert_with(k, s / n as f64, reduce);
        }
        out
    }
}

impl FromIterator<(String, f64)> for Metrics {
    /// Entries reduced by [`Reduce::Mean`].
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        Metrics { values: iter.into_iter().collect(), reductions: BTreeMap::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_handles_missing_names() {
        let a = Metrics::new().with("x", 1.0).with("y", 2.0);
        let b = Metrics::new().with("x", 3.0);
        let m = Metrics::mean(&[a, b]);
        assert_eq!(m.get("x"), Some(2.0));
        assert_eq!(m.get("y"), Some(2.0));
        assert_eq!(Metrics::mean(&[]).len(), 0);
    }

    #[test]
    fn serde_round_trip() {
        let a = Metrics::new().with("loss", 0.5);
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(s, r#"{"loss":0.5}"#);
        let b: Metrics = serde_json::from_str(&s).unwrap();
        assert_eq!(a, b);
    }
}
