//! Zero-copy host views of f32 tensors, for stages that compute on host slices (advantage
//! estimators, fused losses).

use std::ops::Range;

use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};

use crate::Result;

/// A tensor's elements as a row-major host `&[f32]` (any rank): borrowed in place when the
/// tensor is a contiguous f32 CPU tensor, else converted to f32 and copied.
///
/// Borrowing saves a full copy of every `(B, T)` input, which for a loss at `B·T = 2M` costs as
/// much as the computation itself. While a borrowed view lives, the tensor's storage is
/// read-locked: several views of one storage may coexist (e.g. `old = lp.detach()`), and only an
/// in-place write to that storage from another thread would wait for them.
///
/// ```
/// use rl_core::{Device, Tensor, host::HostF32};
///
/// let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let v = HostF32::new(&t)?;
/// assert!(v.is_borrowed());
/// assert_eq!(v.as_slice(), &[1.0, 2.0, 3.0, 4.0]);
/// // a transposed (non-contiguous) or f64 tensor is copied
/// let tt = t.t()?;
/// let copied = HostF32::new(&tt)?;
/// assert!(!copied.is_borrowed());
/// assert_eq!(copied.as_slice(), &[1.0, 3.0, 2.0, 4.0]);
/// assert_eq!(copied.into_vec(), vec![1.0, 3.0, 2.0, 4.0]);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub struct HostF32<'t>(Inner<'t>);

enum Inner<'t> {
    /// The read-locked CPU storage and the tensor's element range in it.
    Borrowed(StorageRef<'t>, Range<usize>),
    /// A converted copy (other devices, dtypes or layouts).
    Copied(Vec<f32>),
}

impl<'t> HostF32<'t> {
    /// A view of `t`.
    ///
    /// # Errors
    /// A failed device-to-host copy or dtype conversion.
    pub fn new(t: &'t Tensor) -> Result<Self> {
        if t.dtype() == DType::F32 {
            let (s, l) = t.storage_and_layout();
            if let (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) = (&*s, l.contiguous_offsets())
            {
                return Ok(Self(Inner::Borrowed(s, a..b)));
            }
        }
        let flat = t.flatten_all()?;
        let v = if flat.dtype() == DType::F32 { flat } else { flat.to_dtype(DType::F32)? };
        Ok(Self(Inner::Copied(v.to_vec1()?)))
    }

    /// The elements, row-major (`t.elem_count()` of them).
    pub fn as_slice(&self) -> &[f32] {
        match &self.0 {
            Inner::Borrowed(s, r) => match &**s {
                Storage::Cpu(CpuStorage::F32(v)) => &v[r.clone()],
                // `new` borrows only f32 CPU storage, whose variant cannot change under the lock.
                _ => &[],
            },
            Inner::Copied(v) => v,
        }
    }

    /// The elements as an owned vector: the copy itself when the view already copied, else a
    /// copy of the borrowed elements.
    pub fn into_vec(self) -> Vec<f32> {
        match self.0 {
            Inner::Copied(v) => v,
            Inner::Borrowed(..) => self.as_slice().to_vec(),
        }
    }

    /// `true` when the view reads the tensor's storage in place.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Inner::Borrowed(..))
    }
}

impl std::fmt::Debug for HostF32<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostF32")
            .field("len", &self.as_slice().len())
            .field("borrowed", &self.is_borrowed())
            .finish()
    }
}
