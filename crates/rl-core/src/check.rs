//! Input validation shared by every stage: shapes, finiteness, masks.
//!
//! Stages call these at their boundary so that bad input becomes a typed [`Error`] instead of a
//! panic deep inside candle or a NaN loss three steps later.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

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
///
/// # Errors
/// [`Error::ShapeMismatch`] when the mask is not two-dimensional, [`Error::InvalidMask`] (naming
/// the row and column) when it holds a value other than 0 and 1.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// let m = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 0.5, 0.0]], &Device::Cpu).unwrap();
/// let err = rl_core::check::mask_lengths(&m, "response_mask").unwrap_err();
/// assert!(matches!(err, rl_core::Error::InvalidMask { row: 1, col: 1, .. }));
/// ```
pub fn mask_lengths(mask: &Tensor, what: &str) -> Result<Vec<usize>> {
    let (b, t) = dims2(mask, what)?;
    let host = crate::host::HostF32::new(mask)?;
    Ok(mask_rows(host.as_slice(), b, t, what)?.lengths)
}

/// Row lengths and extents of a binary `(B, T)` mask, from [`mask_rows`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskRows {
    /// `L_i = Σ_t M_it`, one per row.
    pub lengths: Vec<usize>,
    /// One past the last valid token of each row (0 for an empty row): everything after it is
    /// padding.
    pub ends: Vec<usize>,
}

/// Rows per rayon job in [`mask_rows`].
const ROWS_PER_JOB: usize = 8;
/// Tokens per block in [`mask_rows`]'s vectorised inner loop.
const BLOCK: usize = 64;

/// Checks that a row-major `(B, T)` mask (`mask.len() == b * t`) holds only 0.0 and 1.0 and
/// returns its row lengths and extents. One parallel pass over the rows (blocks of 64 tokens in
/// a branch-free loop that vectorises); the offending position is searched only on failure.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `mask.len() != b * t`; [`Error::InvalidMask`] with the row and
/// column of the first (row-major) element that is not 0 or 1 (NaN included).
///
/// ```
/// let m = [1f32, 1.0, 0.0, 0.0, 1.0, 0.0];
/// let rows = rl_core::check::mask_rows(&m, 2, 3, "mask")?;
/// assert_eq!(rows.lengths, vec![2, 1]);
/// assert_eq!(rows.ends, vec![2, 2]);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub fn mask_rows(mask: &[f32], b: usize, t: usize, what: &str) -> Result<MaskRows> {
    if Some(mask.len()) != b.checked_mul(t) {
        return Err(Error::shape(what, &[b, t], &[mask.len()]));
    }
    if t == 0 {
        return Ok(MaskRows { lengths: vec![0; b], ends: vec![0; b] });
    }
    let rows: Vec<(usize, usize, bool)> =
        mask.par_chunks(t).with_max_len(ROWS_PER_JOB).map(row_summary).collect();
    if let Some(row) = rows.iter().position(|r| !r.2) {
        let r = &mask[row * t..(row + 1) * t];
        let col = r.iter().position(|x| *x != 0.0 && *x != 1.0).unwrap_or(0);
        return Err(Error::InvalidMask { what: what.into(), row, col, value: r[col] as f64 });
    }
    let (lengths, ends) = rows.into_iter().map(|r| (r.0, r.1)).unzip();
    Ok(MaskRows { lengths, ends })
}

/// `(length, end, binary)` of one mask row.
fn row_summary(r: &[f32]) -> (usize, usize, bool) {
    let (mut n, mut ok, mut last) = (0usize, true, None);
    for (c, block) in r.chunks(BLOCK).enumerate() {
        let (mut k, mut good) = (0u32, true);
        for x in block {
            k += u32::from(*x != 0.0);
            good &= (*x == 0.0) | (*x == 1.0);
        }
        (n, ok) = (n + k as usize, ok & good);
        if k > 0 {
            last = Some(c * BLOCK);
        }
    }
    let end = last.map_or(0, |o| {
        let block = &r[o..(o + BLOCK).min(r.len())];
        o + block.iter().rposition(|x| *x != 0.0).map_or(0, |i| i + 1)
    });
    (n, end, ok)
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
        let bad = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 0.0, 0.5]], &d)?;
        match mask_lengths(&bad, "m") {
            Err(Error::InvalidMask { what, row: 1, col: 2, value }) => {
                assert_eq!((what.as_str(), value), ("m", 0.5));
            }
            other => panic!("expected InvalidMask at (1, 2), got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn mask_rows_lengths_ends_and_errors() -> Result<()> {
        // Rows longer than one block, with interior zeros and an empty row.
        let t = 150;
        let mut m = vec![0f32; 3 * t];
        m[..70].fill(1.0);
        m[t + 3] = 1.0;
        m[t + 140] = 1.0;
        let rows = mask_rows(&m, 3, t, "m")?;
        assert_eq!(rows.lengths, vec![70, 2, 0]);
        assert_eq!(rows.ends, vec![70, 141, 0]);
        assert_eq!(mask_rows(&[], 4, 0, "m")?.lengths, vec![0; 4]);
        assert!(matches!(mask_rows(&m, 2, t, "m"), Err(Error::ShapeMismatch { .. })));
        for (pos, v) in [(2 * t + 149, 0.5f32), (t + 64, f32::NAN), (0, -1.0), (5, 2.0)] {
            let mut bad = m.clone();
            bad[pos] = v;
            match mask_rows(&bad, 3, t, "response_mask") {
                Err(Error::InvalidMask { row, col, .. }) => {
                    assert_eq!((row, col), (pos / t, pos % t))
                }
                other => panic!("{v} at {pos}: expected InvalidMask, got {other:?}"),
            }
        }
        Ok(())
    }
}
