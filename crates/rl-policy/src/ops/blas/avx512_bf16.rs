//! bf16 products with f32 accumulation on CPUs with AVX-512 BF16 (`vdpbf16ps`: AMD Zen 4 and
//! later, Intel Cooper Lake and Sapphire Rapids and later), in Rust, for when MKL's
//! `cblas_gemm_bf16bf16f32` is not loaded.
//!
//! `vdpbf16ps` multiplies 16 pairs of bf16 values and adds each pair's two products to one f32
//! lane, so the shared dimension `k` is consumed two at a time. Two kernels:
//!
//! - [`gemm`]: the packed GotoBLAS scheme. `a` is copied into micro-panels of [`MR`] rows × `k/2`
//!   pairs (one 32-bit word per row and pair), `b` into panels of `k/2` pairs × [`NR`] columns (the
//!   pair of a column in one 32-bit lane), and an `MR × NR` tile of `c` lives in 16 registers while
//!   [`KC`] pairs stream through it (each `b` row of the panel is two registers, each `a` pair is a
//!   broadcast). Blocks of [`MC`] rows × [`NC`] columns of `c` are the parallel tasks.
//! - [`dots`]: few rows against a `b` whose pairs are adjacent in memory (`b = wᵀ` for a
//!   row-major weight `w`, the decode step of sampling): no packing, each output is a dot product
//!   of two bf16 rows, 32 elements per instruction, so the weight is read once per call.
//!
//! The instruction flushes denormal inputs and outputs to zero and rounds each addition to nearest
//! even; the products of two bf16 values are exact in f32. Results differ from the f32 product of
//! the same bf16-rounded operands by the order of the f32 additions only (and by denormals).

use std::arch::x86_64::*;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Mat, Out, PREFETCH_GROUPS, empty_product, prefetch_rows};

/// Rows of a register tile of `c`.
const MR: usize = 8;
/// Columns of a register tile of `c` (two 16-lane registers).
const NR: usize = 32;
/// Pairs of the shared dimension per cache block (a `b` micro-panel block is `KC · NR · 4` bytes =
/// 32 KiB, an `a` block `MC · KC · 4` = 64 KiB).
const KC: usize = 256;
/// Rows of `c` per parallel task.
const MC: usize = 64;
/// Columns of `c` per parallel task.
const NC: usize = 256;
/// Most rows [`dots`] handles (above it, [`gemm`]'s packing pays for itself).
pub(super) const DOTS_ROWS: usize = 32;

/// `true` when this CPU runs AVX-512 F and AVX-512 BF16 (detected once, at run time).
pub(super) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    })
}

/// Element `(i, j)` of a bf16 operand, as raw bits.
///
/// # Safety
/// `(i, j)` is inside the operand.
#[inline(always)]
unsafe fn at(x: Mat<u16>, i: usize, j: usize) -> u32 {
    unsafe { u32::from(*x.ptr.add(i * x.rs + j * x.cs)) }
}

/// `x` (`rows × k`) as panels of `width` rows: word `(panel, pair p, row r)` holds `x[row, 2p]`
/// in its low and `x[row, 2p + 1]` in its high half, zero past `rows` or `k`. `a` is packed with
/// `width = MR`, `b` as `bᵀ` with `width = NR` (a panel's pair `p` is then one `b` row pair).
///
/// # Safety
/// `x` addresses `rows × k` readable elements.
unsafe fn pack(rows: usize, k: usize, x: Mat<u16>, width: usize, parallel: bool) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut out = vec![0u32; rows.div_ceil(width) * kp * width];
    let fill = |(panel, dst): (usize, &mut [u32])| {
        let live = width.min(rows - panel * width);
        for p in 0..kp {
            for r in 0..live {
                let row = panel * width + r;
                // SAFETY: `row < rows`, `2p < k`, and `2p + 1` is read only when `< k`.
                let lo = unsafe { at(x, row, 2 * p) };
                let hi = if 2 * p + 1 < k { unsafe { at(x, row, 2 * p + 1) } } else { 0 };
                dst[p * width + r] = lo | hi << 16;
            }
        }
    };
    if parallel {
        out.par_chunks_mut(kp * width).enumerate().for_each(fill);
    } else {
        out.chunks_mut(kp * width).enumerate().for_each(fill);
    }
    out
}

/// Reinterprets 32 bf16 values (16 pairs) as `vdpbf16ps`'s operand type.
#[inline(always)]
fn bh(x: __m512i) -> __m512bh {
    // SAFETY: both are plain 64-byte vectors; every bit pattern is a valid value of either.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
}

/// One `MR × NR` tile: `c ← (first ? 0 : c) + Σ_p a_p ⊗ b_p` over `kc` pairs of packed `a`
/// (`MR` words per pair) and packed `b` (`NR` words per pair); `c` has row stride `ldc`.
///
/// # Safety
/// AVX-512 F + BF16 are available; `a` holds `kc · MR` words, `b` `kc · NR`, and `c` addresses
/// `MR` rows of `NR` writable f32 at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(kc: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, first: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if !first {
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row `r` of the tile (the caller's bounds).
            unsafe {
                row[0] = _mm512_loadu_ps(c.add(r * ldc));
                row[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
            }
        }
    }
    for p in 0..kc {
        // SAFETY: pair `p < kc` of both packed blocks.
        let (b0, b1, ap) = unsafe {
            let bp = b.add(p * NR);
            (
                bh(_mm512_loadu_si512(bp.cast())),
                bh(_mm512_loadu_si512(bp.add(16).cast())),
                a.add(p * MR),
            )
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: word `r < MR` of pair `p`.
            let x = bh(_mm512_set1_epi32(unsafe { *ap.add(r) } as i32));
            row[0] = _mm512_dpbf16_ps(row[0], x, b0);
            row[1] = _mm512_dpbf16_ps(row[1], x, b1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row `r` of the tile.
        unsafe {
            _mm512_storeu_ps(c.add(r * ldc), row[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
        }
    }
}

/// [`tile`] for a tile cut by the edge of `c` (`rows ≤ MR`, `cols ≤ NR`), through a full-size
/// scratch tile.
///
/// # Safety
/// As [`tile`], with `c` addressing `rows × cols` elements at stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn edge_tile(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    first: bool,
    rows: usize,
    cols: usize,
) {
    let mut buf = [0f32; MR * NR];
    for r in 0..rows {
        for j in 0..cols {
            // SAFETY: `(r, j)` inside the tile.
            buf[r * NR + j] = if first { 0.0 } else { unsafe { *c.add(r * ldc + j) } };
        }
    }
    // SAFETY: `buf` is a whole tile at stride `NR`; the packed operands as the caller's.
    unsafe { tile(kc, a, b, buf.as_mut_ptr(), NR, first) };
    for r in 0..rows {
        for j in 0..cols {
            // SAFETY: as above.
            unsafe { *c.add(r * ldc + j) = buf[r * NR + j] };
        }
    }
}

/// `c (m × n, row stride ldc) = a (m × k) · b (k × n)` for bf16 operands (any strides), f32
/// accumulation and result. Parallel over blocks of `c` on the rayon threads when `parallel`.
///
/// # Safety
/// [`available`] is `true`; `a` and `b` address `m × k` and `k × n` readable elements; `c`
/// addresses `m × n` writable elements at row stride `ldc ≥ n` that nothing else touches.
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    a: Mat<u16>,
    b: Mat<u16>,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
) {
    // SAFETY: the caller's bounds on `c`.
    if unsafe { empty_product((m, n, k), c, ldc) } {
        return;
    }
    let kp = k.div_ceil(2);
    let bt = Mat { ptr: b.ptr, rs: b.cs, cs: b.rs };
    // SAFETY: the caller's bounds (`bt` addresses the same elements as `b`).
    let (pa, pb) = unsafe { (pack(m, k, a, MR, parallel), pack(n, k, bt, NR, parallel)) };
    let (blocks_m, blocks_n) = (m.div_ceil(MC), n.div_ceil(NC));
    let out = Out(c);
    let block = |t: usize| {
        let (i0, j0) = ((t / blocks_n) * MC, (t % blocks_n) * NC);
        let (i1, j1) = ((i0 + MC).min(m), (j0 + NC).min(n));
        for p0 in (0..kp).step_by(KC) {
            let kc = KC.min(kp - p0);
            for j in (j0..j1).step_by(NR) {
                let bp = pb[(j / NR) * kp * NR + p0 * NR..].as_ptr();
                for i in (i0..i1).step_by(MR) {
                    let ap = pa[(i / MR) * kp * MR + p0 * MR..].as_ptr();
                    let (rows, cols) = (MR.min(m - i), NR.min(n - j));
                    // SAFETY: the tile `(i, j)` lies in this task's block of `c`; the packed
                    // blocks hold `kc` pairs from `p0` on; AVX-512 BF16 is available.
                    unsafe {
                        let ct = out.ptr().add(i * ldc + j);
                        if rows == MR && cols == NR {
                            tile(kc, ap, bp, ct, ldc, p0 == 0);
                        } else {
                            edge_tile(kc, ap, bp, ct, ldc, p0 == 0, rows, cols);
                        }
                    }
                }
            }
        }
    };
    if parallel {
        (0..blocks_m * blocks_n).into_par_iter().for_each(block);
    } else {
        (0..blocks_m * blocks_n).for_each(block);
    }
}

/// `R × J` outputs `c[i + r, j + q]` of [`dots`] as dot products over `k` (a multiple of 32).
///
/// # Safety
/// As [`dots`], for rows `i..i + R` and columns `j..j + J`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dots_tile<const R: usize, const J: usize>(
    k: usize,
    a: Mat<u16>,
    b: Mat<u16>,
    c: *mut f32,
    ldc: usize,
    (i, j): (usize, usize),
    pf: (usize, usize),
) {
    // Rows `pf.0..pf.1` of the column group `PREFETCH_GROUPS` ahead, one cache line (32
    // elements) per step; prefetches never fault and their addresses use `wrapping_add`.
    let ahead = b.ptr.wrapping_add((j + PREFETCH_GROUPS * J) * b.cs);
    let mut acc = [[_mm512_setzero_ps(); J]; R];
    for p in (0..k).step_by(32) {
        for q in pf.0..pf.1 {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(q * b.cs + p).cast());
        }
        let mut w = [bh(_mm512_setzero_si512()); J];
        for (q, w) in w.iter_mut().enumerate() {
            // SAFETY: 32 elements of column `j + q` of `b` (contiguous, `b.rs == 1`) from `p`.
            *w = bh(unsafe { _mm512_loadu_si512(b.ptr.add((j + q) * b.cs + p).cast()) });
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: 32 elements of row `i + r` of `a` (contiguous, `a.cs == 1`) from `p`.
            let x = bh(unsafe { _mm512_loadu_si512(a.ptr.add((i + r) * a.rs + p).cast()) });
            for (acc, w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_dpbf16_ps(*acc, x, *w);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, acc) in acc.iter().enumerate() {
            // SAFETY: output `(i + r, j + q)` of `c`.
            unsafe { *c.add((i + r) * ldc + j + q) = _mm512_reduce_add_ps(*acc) };
        }
    }
}

/// `c (m × n, row stride ldc) = a · b` for few rows `m ≤ DOTS_ROWS` with `a` row-major
/// (`a.cs == 1`), `b`'s columns contiguous (`b.rs == 1`, i.e. `b = wᵀ` for a row-major `w`) and
/// `k` a multiple of 32: each output a dot product of two bf16 rows, columns split over the rayon
/// threads when `parallel`. Returns `false` (and does nothing) when the shapes do not qualify.
///
/// # Safety
/// As [`gemm`].
pub(super) unsafe fn dots(
    (m, n, k): (usize, usize, usize),
    a: Mat<u16>,
    b: Mat<u16>,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
) -> bool {
    if m == 0 || m > DOTS_ROWS || k == 0 || k % 32 != 0 || a.cs != 1 || b.rs != 1 || n < 4 {
        return false;
    }
    const J: usize = 4;
    let out = Out(c);
    // Columns `j0..j1` (at least `J`) of every row: tiles of 4 rows × `J` columns, then single
    // rows; a last tile past `j1` moves left and rewrites columns this task already computed.
    let run = |j0: usize, j1: usize| {
        // Each tile prefetches its share of the columns a group ahead (`prefetch_rows`).
        let nt = m / 4 + m % 4;
        for j in (j0..j1).step_by(J).map(|j| j.min(j1 - J)) {
            let (mut i, mut t) = (0, 0);
            // SAFETY (both calls): rows `< m`, columns `j..j + J ≤ j1 ≤ n` owned by this task,
            // `k` a multiple of 32, AVX-512 BF16 available (the caller's contract).
            while i + 4 <= m {
                let pf = prefetch_rows::<J>((t, nt));
                unsafe { dots_tile::<4, J>(k, a, b, out.ptr(), ldc, (i, j), pf) };
                (i, t) = (i + 4, t + 1);
            }
            while i < m {
                let pf = prefetch_rows::<J>((t, nt));
                unsafe { dots_tile::<1, J>(k, a, b, out.ptr(), ldc, (i, j), pf) };
                (i, t) = (i + 1, t + 1);
            }
        }
    };
    // Tasks of at least `CHUNK` columns (the last one takes the rest).
    const CHUNK: usize = 64;
    let tasks = n / CHUNK;
    if parallel && tasks > 1 {
        (0..tasks)
            .into_par_iter()
            .for_each(|t| run(t * CHUNK, if t + 1 == tasks { n } else { (t + 1) * CHUNK }));
    } else {
        run(0, n);
    }
    true
}
