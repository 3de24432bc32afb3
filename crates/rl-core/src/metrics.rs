//! Named scalar metrics returned by every stage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Named scalars (clip fraction, approx KL, reward mean, ...), sorted by name.
///
/// Every stage returns its metrics in one of these; the trainer merges them with a prefix
/// (`"actor/"`, `"critic/"`, `"reward/"`) and writes one JSON object per step.
///
/// ```
/// use rl_core::Metrics;
/// let mut m = Metrics::new();
/// m.insert("clipfrac", 0.25);
/// let mut all = Metrics::new();
/// all.extend_prefixed("actor/", &m);
/// assert_eq!(all.get("actor/clipfrac"), Some(0.25));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// An empty set of metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value` (replacing any previous value).
    pub fn insert(&mut self, name: impl Into<String>, value: f64) {
        self.0.insert(name.into(), value);
    }

    /// Builder-style [`Metrics::insert`].
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// Copies every entry of `other` into `self`, with `prefix` prepended to its name.
    pub fn extend_prefixed(&mut self, prefix: &str, other: &Metrics) {
        for (k, v) in &other.0 {
            self.0.insert(format!("{prefix}{k}"), *v);
        }
    }

    /// Iterates over `(name, value)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` when there are no metrics.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Element-wise mean over several metric sets (e.g. over micro-batches). A name missing from
    /// some sets is averaged over the sets that have it.
    pub fn mean(sets: &[Metrics]) -> Metrics {
        let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for set in sets {
            for (k, v) in &set.0 {
                let e = sums.entry(k.clone()).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
        }
        Metrics(sums.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect())
    }
}

impl FromIterator<(String, f64)> for Metrics {
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        Metrics(iter.into_iter().collect())
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
