//! The gradient sink now lives in [`rl_core::grad`]; these are the paths rl-policy's ops use.

pub use rl_core::grad::{GradSink, GradSinkError, Slot, slot};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{head_log_prob_entropy, linear};
    use candle_core::Device;
    use candle_core::backprop::GradStore;
    use candle_core::{Tensor, Var};

    fn values(shape: (usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1;
        let v: Vec<f64> = (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 7919 + 13)) % 997) as f64 / 997.0 - 0.5)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Σ over micro-batches of a loss through `linear` and the output head: the gradients a sink
    /// collects equal the summed `GradStore` gradients without one, bit for bit in f64; other
    /// weights' and the inputs' gradients are unaffected; after the sink is dropped, gradients
    /// flow to candle again.
    #[test]
    fn sunk_gradients_equal_accumulated_store_gradients() {
        let w = Var::from_tensor(&values((5, 4), 1)).unwrap();
        let head = Var::from_tensor(&values((7, 5), 2)).unwrap();
        let other = Var::from_tensor(&values((4, 4), 3)).unwrap();
        let targets = Tensor::new(&[1u32, 6, 0], &Device::Cpu).unwrap();
        let loss = |x: &Tensor| {
            let h =
                linear(&linear(x, other.as_tensor(), None).unwrap(), w.as_tensor(), None).unwrap();
            let (lp, ent) = head_log_prob_entropy(&h, head.as_tensor(), &targets, 2).unwrap();
            (lp.sum_all().unwrap() + ent.sum_all().unwrap()).unwrap()
        };
        let xs = [values((3, 4), 4), values((3, 4), 5)];
        // Reference: plain GradStores, summed.
        let mut want = GradStore::default();
        for x in &xs {
            let g = loss(x).backward().unwrap();
            for v in [&w, &head, &other] {
                let g = g.get(v.as_tensor()).unwrap().clone();
                let sum = match want.remove(v.as_tensor()) {
                    Some(p) => (p + g).unwrap(),
                    None => g,
                };
                want.insert(v.as_tensor(), sum);
            }
        }
        let sink = GradSink::new(&[w.clone(), head.clone()]).unwrap();
        assert!(GradSink::new(std::slice::from_ref(&w)).is_err(), "a weight held twice");
        let mut got = GradStore::default();
        for x in &xs {
            let g = loss(x).backward().unwrap();
            assert!(g.get(w.as_tensor()).is_none() && g.get(head.as_tensor()).is_none());
            let o = g.get(other.as_tensor()).unwrap().clone();
            let sum = match got.remove(other.as_tensor()) {
                Some(p) => (p + o).unwrap(),
                None => o,
            };
            got.insert(other.as_tensor(), sum);
        }
        sink.drain_into(&mut got).unwrap();
        for v in [&w, &head, &other] {
            let (a, b) = (got.get(v.as_tensor()).unwrap(), want.get(v.as_tensor()).unwrap());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert_eq!(d, 0.0, "{:?}", v.dims());
        }
        // Drained: the sums restart empty. A graph recorded with the sink but run after it was
        // dropped hands its gradients to candle.
        let pending = loss(&xs[0]);
        drop(sink);
        let g = pending.backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some() && g.get(head.as_tensor()).is_some());
        let again = GradSink::new(std::slice::from_ref(&w)).unwrap();
        let mut none = GradStore::default();
        again.drain_into(&mut none).unwrap();
        assert!(none.get(w.as_tensor()).is_none());
    }
}
