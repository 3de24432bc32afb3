//! Input validation shared by every stage: shapes, finiteness, masks.
//!
//! Stages call these at their boundary so that bad input becomes a typed [`Error`] instead of a
//! panic deep inside candle or a NaN loss three steps later.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Checks that `t` has exactly the dimensions `dims`.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// let t = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert!(rl_core::check::shape(&t, &[2, 3], "x").is_ok());
/// assert!(rl_core::check::shape(&t, &[3, 2], "x").is_err());
/// ```
pub fn shape(t: &Tensor, dims: &[usize], what: &str) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::shape(what, dims, t.dims()));
    }
    Ok(())
}

/// Checks that `t` has the same dimensions as `like` (whose name is only used in the message).
pub fn same_shape(t: &Tensor, like: &Tensor, what: &str) -> Result<()> {
    shape(t, like.dims(), what)
}

/// Checks that `t` is two-dimensional and returns `(rows, cols)`.
pub fn dims2(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.dims() {
        [b, n] => Ok((*b, *n)),
        d => Err(Error::ShapeMismatch {
            what: format!("{what} (expected rank 2)"),
            expected: vec![],
            got: d.to_vec(),
        }),
    }
}

/// Checks that every element of `t` is finite; returns the flat index of the first that is not.
pub fn finite(t: &Tensor, what: &str) -> Result<()> {
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    finite_slice(&v, what)
}

/// [`finite`] for a slice already on the host.
pub fn finite_slice<T: Copy + Into<f64>>(v: &[T], what: &str) -> Result<()> {
    match v.iter().position(|x| !(*x).into().is_finite()) {
        Some(index) => Err(Error::NonFinite { what: what.into(), index, value: v[index].into() }),
        None => Ok(()),
    }
}

/// Checks that every element of `t` is finite **where `mask` is non-zero** (padding may hold
/// anything, as in verl, whose masked helpers zero NaNs outside the mask).
pub fn finite_masked(t: &Tensor, mask: &Tensor, what: &str) -> Result<()> {
    same_shape(mask, t, &format!("mask of {what}"))?;
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let m = mask.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    match v.iter().zip(&m).position(|(x, m)| *m != 0.0 && !x.is_finite()) {
        Some(index) => Err(Error::NonFinite { what: what.into(), index, value: v[index] }),
        None => Ok(()),
    }
}

/// Checks that a `(B, T)` mask holds only 0.0 and 1.0 and returns its row lengths `L_i = Σ_t M_it`.
pub fn mask_lengths(mask: &Tensor, what: &str) -> Result<Vec<usize>> {
    let (_, t) = dims2(mask, what)?;
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut lens = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if let Some(j) = row.iter().position(|x| *x != 0.0 && *x != 1.0) {
            return Err(Error::NonFinite {
                what: format!("{what} (must be 0 or 1)"),
                index: i * t + j,
                value: row[j] as f64,
            });
        }
        lens.push(row.iter().filter(|x| **x != 0.0).count());
    }
    Ok(lens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn finite_masked_ignores_padding() -> Result<()> {
        let d = Device::Cpu;
        let v = Tensor::new(&[[1f32, f32::NAN], [2.0, 3.0]], &d)?;
        let m = Tensor::new(&[[1f32, 0.0], [1.0, 1.0]], &d)?;
        finite_masked(&v, &m, "v")?;
        let m2 = Tensor::new(&[[1f32, 1.0], [1.0, 1.0]], &d)?;
        assert!(matches!(finite_masked(&v, &m2, "v"), Err(Error::NonFinite { index: 1, .. })));
        assert!(matches!(finite(&v, "v"), Err(Error::NonFinite { index: 1, .. })));
        Ok(())
    }

    #[test]
    fn mask_lengths_rejects_non_binary() -> Result<()> {
        let d = Device::Cpu;
        let m = Tensor::new(&[[1f32, 1.0, 0.0], [0.0, 0.0, 0.0]], &d)?;
        assert_eq!(mask_lengths(&m, "m")?, vec![2, 0]);
        let bad = Tensor::new(&[[1f32, 0.5, 0.0]], &d)?;
        assert!(mask_lengths(&bad, "m").is_err());
        Ok(())
    }
}
