//! bf16 products with f32 accumulation on AMX tiles (Intel Sapphire Rapids and later), in Rust
//! with inline assembly, so the tiles serve without MKL.
//!
//! An AMX core holds eight tile registers of up to 16 rows × 64 bytes. `tdpbf16ps c, a, b`
//! multiplies a 16 × 32 bf16 tile `a` by a 32 × 16 bf16 tile `b` into a 16 × 16 f32 tile `c`;
//! `b` is stored in pairs (its row `p` holds, for each of the 16 columns, the two values of the
//! shared dimension `2p` and `2p + 1` side by side: Intel's "VNNI" layout). Both operands are
//! packed per call into whole tiles of 1 KiB, padded with zeros to multiples of 32 rows, 32
//! columns and 32 values of the shared dimension:
//!
//! - `a` (`m × k`): panels of 16 rows; a panel holds its `k / 32` tiles one after the other, each
//!   16 rows × 16 pairs (row `r` of the tile = 64 contiguous bytes of row `r` of the panel);
//! - `b` (`k × n`): panels of 16 columns; a panel holds `k / 2` pair rows of 16 words, so its
//!   tile `t` (pair rows `16t .. 16t + 16`) is again 1 KiB contiguous.
//!
//! A left operand whose rows are already tile rows (contiguous, 64-byte aligned start and row
//! stride, whole tiles) is read in place instead: `super::to_bf16` aligns the activations it
//! rounds for that.
//!
//! The register kernel ([`gemm`]) keeps a 32 × 32 block of `c` in four tiles (two `a` tiles, two
//! `b` tiles, four products per 32 values of `k`) and stores it once, after the whole of `k`. On
//! the 2-core Emerald Rapids Xeon of 2026-12-05 one core ran it at 0.65-0.8 TFLOP/s on SmolLM2's
//! training products alone and 0.4-0.8 within a training pass (2.3 TFLOP/s for tiles already in
//! registers: the tile loads from L2 bound it; blocking the shared dimension did not help).
//! Packing buffers are pooled between calls (fresh pages made up most of the packing time).
//!
//! The decoding step ([`decode`]: at most 16 rows against a transposed row-major weight) packs
//! only the rows: the weight streams straight from memory into the tiles as the left operand, so
//! it is read once per step.
//!
//! Linux hands the tile state to a process only after it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`); [`available`] asks once and is `false` if the kernel refuses.
//! Every task loads the tile configuration before its first tile instruction and releases the
//! tiles after its last, on its own thread; nothing else in the process touches the tiles in
//! between (the tasks do not yield to other rayon work).
//!
//! The instruction flushes denormal inputs to zero and rounds each addition to nearest even, as
//! AVX-512 BF16; results differ from the f32 product of the same bf16 operands by the order of the
//! f32 additions only (and by denormals).

use std::arch::asm;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Mat, Out, empty_product};

/// Rows (and columns) of a tile and pairs of the shared dimension in one.
const T: usize = 16;
/// Words in a packed tile (16 × 16 pairs = 1 KiB).
const TILE: usize = T * T;
/// Rows of `c` per parallel task (a multiple of 32).
const MC: usize = 128;
/// Columns of `c` per parallel task (a multiple of 32).
const NC: usize = 256;
/// Fewest rows and columns for which packing both operands pays (below, the caller's other
/// paths serve).
pub(super) const MIN_DIM: usize = 32;

/// `true` when the CPU has AMX-BF16 tiles, Linux granted this process the tile state, and
/// `RLZ_NO_AMX` is unset (or `0`).
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let off = std::env::var_os("RLZ_NO_AMX").is_some_and(|v| !v.is_empty() && v != "0");
        !off && super::cpu_has_amx_bf16() && request_tiles()
    })
}

/// Asks Linux for the AMX tile data state (`ARCH_REQ_XCOMP_PERM` = 0x1023, `XFEATURE_XTILEDATA`
/// = 18); `true` when granted (also when it was granted before, e.g. by MKL).
#[cfg(target_os = "linux")]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the call reads no memory of ours; on failure it returns -1 and changes nothing.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tiles() -> bool {
    false
}

/// Assembly that zeroes the four accumulator tiles `tmm0`-`tmm3`, the start of both kernels.
macro_rules! zero_accumulators {
    () => {
        "tilezero tmm0\ntilezero tmm1\ntilezero tmm2\ntilezero tmm3"
    };
}

/// The tile configuration (palette 1): tiles 0-7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = T as u8;
        t += 1;
    }
    Config(c)
};

/// The address of element `(i, j)` of `x` (a function of the whole operand, so that closures
/// capture `x` as one `Sync` value rather than its raw pointer field).
fn addr(x: Mat<u16>, i: usize, j: usize) -> *const u16 {
    x.ptr.wrapping_add(i * x.rs + j * x.cs)
}

/// `true` when `x`'s rows are contiguous (else its columns are: candle's matmul layouts have one
/// unit stride).
fn unit_cols(x: Mat<u16>) -> bool {
    x.cs == 1
}

/// Tile `(o, t)` of [`pack`]: the words `(r, q)` = `x[16o + r, 2(16t + q)]` (low half) and
/// `x[16o + r, 2(16t + q) + 1]` (high half), zero past `outer` and `k`, stored at `r·16 + q` or,
/// with `pairs_major`, at `q·16 + r`. Reads along `x`'s unit stride.
///
/// # Safety
/// `x` addresses `outer × k` readable elements, and `x.cs == 1` or `x.rs == 1`.
unsafe fn fill_tile(
    x: Mat<u16>,
    (outer, k): (usize, usize),
    (o, t): (usize, usize),
    pairs_major: bool,
    tile: &mut [u32],
) {
    let rows = T.min(outer.saturating_sub(o * T));
    let k0 = 2 * T * t;
    let cols = (2 * T).min(k.saturating_sub(k0));
    let word = |lo: u16, hi: u16| u32::from(lo) | u32::from(hi) << 16;
    if rows == T && cols == 2 * T {
        // A whole tile: straight from the source (x86 is little-endian, so two adjacent bf16
        // values read as one `u32` are the word `lo | hi << 16`).
        if unit_cols(x) {
            for r in 0..T {
                let src = addr(x, o * T + r, k0).cast::<u32>();
                for q in 0..T {
                    // SAFETY: row `16o + r < outer`, columns `k0 .. k0 + 32 ≤ k`, contiguous.
                    let w = unsafe { src.add(q).read_unaligned() };
                    tile[if pairs_major { q * T + r } else { r * T + q }] = w;
                }
            }
        } else {
            for q in 0..T {
                // SAFETY: columns `k0 + 2q, k0 + 2q + 1 < k`, rows `16o .. 16o + 16 ≤ outer`,
                // contiguous.
                let (lo, hi) = unsafe {
                    (
                        std::slice::from_raw_parts(addr(x, o * T, k0 + 2 * q), T),
                        std::slice::from_raw_parts(addr(x, o * T, k0 + 2 * q + 1), T),
                    )
                };
                for r in 0..T {
                    tile[if pairs_major { q * T + r } else { r * T + q }] = word(lo[r], hi[r]);
                }
            }
        }
        return;
    }
    // The words in the order the reads give them: row-major (`r·16 + q`) when `x`'s rows are
    // contiguous, pair-major (`q·16 + r`) when its columns are.
    let mut w = [0u32; TILE];
    let row_major = unit_cols(x);
    if row_major {
        for r in 0..rows {
            let mut v = [0u16; 2 * T];
            // SAFETY: row `16o + r < outer`, columns `k0 .. k0 + cols ≤ k`, contiguous.
            let src = unsafe { std::slice::from_raw_parts(addr(x, o * T + r, k0), cols) };
            v[..cols].copy_from_slice(src);
            for q in 0..T {
                w[r * T + q] = word(v[2 * q], v[2 * q + 1]);
            }
        }
    } else {
        let zeros = [0u16; T];
        for q in 0..T {
            let col = |j: usize| {
                if j < cols {
                    // SAFETY: column `k0 + j < k`, rows `16o .. 16o + rows ≤ outer`, contiguous.
                    unsafe { std::slice::from_raw_parts(addr(x, o * T, k0 + j), rows) }
                } else {
                    &zeros[..rows]
                }
            };
            let (lo, hi) = (col(2 * q), col(2 * q + 1));
            for r in 0..rows {
                w[q * T + r] = word(lo[r], hi[r]);
            }
        }
    }
    if row_major != pairs_major {
        tile.copy_from_slice(&w);
    } else {
        for i in 0..T {
            for j in 0..T {
                tile[j * T + i] = w[i * T + j];
            }
        }
    }
}

/// Packs `x` (`outer × k`, rows or columns contiguous: `x.cs == 1` or `x.rs == 1`) in tiles of
/// 16 `outer` indices × 16 pairs ([`fill_tile`]): `panels` panels of `kt` tiles, panel `o`'s tile
/// `t` at `(o·kt + t)·256`. With contiguous rows the tiles are filled panel by panel (each reads its rows in order); with
/// contiguous columns, tile column by tile column (each pair of `x` columns is read once, in
/// order, across all panels), so strided operands are not re-read from memory per panel.
///
/// # Safety
/// `x` addresses `outer × k` readable elements, and `x.cs == 1` or `x.rs == 1`.
unsafe fn pack(
    outer: usize,
    k: usize,
    x: Mat<u16>,
    (panels, kt): (usize, usize),
    pairs_major: bool,
    parallel: bool,
) -> Packed {
    let mut buf = Packed::take(panels * kt * TILE);
    let out = &mut buf.0[..panels * kt * TILE];
    if unit_cols(x) {
        let fill = |(o, panel): (usize, &mut [u32])| {
            for (t, tile) in panel.chunks_exact_mut(TILE).enumerate().take(kt) {
                // SAFETY: the caller's bounds.
                unsafe { fill_tile(x, (outer, k), (o, t), pairs_major, tile) };
            }
        };
        let chunks = out.chunks_mut(kt * TILE);
        if parallel {
            chunks.collect::<Vec<_>>().into_par_iter().enumerate().for_each(fill);
        } else {
            chunks.enumerate().for_each(fill);
        }
    } else {
        let dst = Out(out.as_mut_ptr());
        let fill = |t: usize| {
            for o in 0..panels {
                // SAFETY: tile `(o, t)` of `out` (`o < panels`, `t < kt`) is written by this
                // task only; `out` outlives the tasks.
                let tile = unsafe {
                    std::slice::from_raw_parts_mut(dst.ptr().add((o * kt + t) * TILE), TILE)
                };
                // SAFETY: the caller's bounds.
                unsafe { fill_tile(x, (outer, k), (o, t), pairs_major, tile) };
            }
        };
        if parallel {
            (0..kt).into_par_iter().for_each(fill);
        } else {
            (0..kt).for_each(fill);
        }
    }
    buf
}

/// Most words a packing buffer keeps between calls (256 MiB); larger ones are freed.
const POOL_MAX_WORDS: usize = 1 << 26;
/// Most buffers kept.
const POOL_MAX_BUFFERS: usize = 4;
/// Packing buffers of earlier calls: reusing them spares each call the page faults of fresh
/// memory (on the Emerald Rapids Xeon of 2026-12-05 those made up most of the packing time).
static POOL: std::sync::Mutex<Vec<Vec<u32>>> = std::sync::Mutex::new(Vec::new());

/// A packed operand in a buffer of [`POOL`], returned to it when dropped.
struct Packed(Vec<u32>);

impl Packed {
    /// A buffer of at least `len` words (contents unspecified: [`pack`] writes every word it
    /// uses): the smallest pooled one that is large enough, else the largest grown.
    fn take(len: usize) -> Self {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let fit = (0..pool.len()).filter(|&i| pool[i].len() >= len).min_by_key(|&i| pool[i].len());
        let any = (0..pool.len()).max_by_key(|&i| pool[i].len());
        let mut buf = fit.or(any).map(|i| pool.swap_remove(i)).unwrap_or_default();
        drop(pool);
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Self(buf)
    }

    /// The packed words from `at` on.
    fn from(&self, at: usize) -> *const u32 {
        self.0[at..].as_ptr()
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.len() <= POOL_MAX_WORDS {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_MAX_BUFFERS {
                pool.push(buf);
            }
        }
    }
}

/// Where the left operand's tiles are: the two 16-row tiles of one 32-row block start at `a0` /
/// `a1`, their rows `row` bytes apart, and the next tile along the shared dimension `step` bytes
/// further on (packed panels: 64 and 1024; `a` read in place: its row stride and 64).
#[derive(Clone, Copy)]
struct Left {
    a0: *const u8,
    a1: *const u8,
    row: usize,
    step: usize,
}

/// The 32 × 32 block `c` (row stride `ldc` floats) = the 32 rows of the left operand that `a`
/// locates times the two `b` panels from `b0` / `b1`, over `kt` tiles of the shared dimension.
///
/// # Safety
/// The tiles are configured ([`CONFIG`]) on this thread; `a` addresses `kt` tiles per row of
/// tiles, `b0`, `b1` each `kt` packed tiles; `c` addresses 32 rows of 32 writable floats at stride
/// `ldc`; `kt ≥ 1`.
#[inline(always)]
unsafe fn block(kt: usize, a: Left, b: (*const u32, *const u32), c: *mut f32, ldc: usize) {
    // SAFETY: the caller's contract; the loop reads `kt` tiles from each pointer and the stores
    // write the 32 × 32 block; tile registers are not used by compiled Rust code.
    unsafe {
        asm!(
            zero_accumulators!(),
            "2:",
            "tileloadd tmm4, [{a0} + {sa}]",
            "tileloadd tmm6, [{b0} + {s}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, {step}",
            "add {a1}, {step}",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {kt}",
            "jnz 2b",
            "tilestored [{c0} + {ldc}], tmm0",
            "tilestored [{c1} + {ldc}], tmm1",
            "tilestored [{c2} + {ldc}], tmm2",
            "tilestored [{c3} + {ldc}], tmm3",
            a0 = inout(reg) a.a0 => _,
            a1 = inout(reg) a.a1 => _,
            sa = in(reg) a.row,
            step = in(reg) a.step,
            b0 = inout(reg) b.0 => _,
            b1 = inout(reg) b.1 => _,
            kt = inout(reg) kt => _,
            s = in(reg) 64usize,
            c0 = in(reg) c,
            c1 = in(reg) c.add(T),
            c2 = in(reg) c.add(T * ldc),
            c3 = in(reg) c.add(T * ldc + T),
            ldc = in(reg) ldc * 4,
            options(nostack),
        );
    }
}

/// `c (m × n, row stride ldc) = a (m × k) · b (k × n)` for bf16 operands (each with contiguous
/// rows or columns), f32 accumulation and result, on the AMX tiles. Parallel over blocks of `c`
/// on the rayon threads when `parallel`. `a` is read in place, without packing, when it has
/// contiguous rows at a 64-byte aligned start and row stride, whole 32-row blocks and whole
/// 32-value tiles of `k` (a tile row is then 64 bytes of a row of `a`, one cache line); `b` is
/// always packed (the tiles want it in pairs of the shared dimension).
///
/// # Safety
/// [`available`] is `true`; `a` and `b` address `m × k` and `k × n` readable elements, each with
/// a unit row or column stride; `c` addresses `m × n` writable elements at row stride `ldc ≥ n`
/// that nothing else touches.
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
    let kt = k.div_ceil(2 * T);
    let (pm, pn) = (m.div_ceil(2 * T) * 2, n.div_ceil(2 * T) * 2);
    let bt = Mat { ptr: b.ptr, rs: b.cs, cs: b.rs };
    let aligned = |x: usize| x.is_multiple_of(64);
    let whole = m.is_multiple_of(2 * T) && k.is_multiple_of(2 * T);
    let in_place = unit_cols(a) && whole && aligned(a.ptr as usize) && aligned(2 * a.rs);
    // SAFETY: the caller's bounds (`bt` addresses the same elements as `b`).
    let (pa, pb) = unsafe {
        let pa = (!in_place).then(|| pack(m, k, a, (pm, kt), false, parallel));
        (pa, pack(n, k, bt, (pn, kt), true, parallel))
    };
    let left = |i: usize| match &pa {
        Some(p) => Left {
            a0: p.from((i / T) * kt * TILE).cast(),
            a1: p.from((i / T + 1) * kt * TILE).cast(),
            row: 64,
            step: TILE * std::mem::size_of::<u32>(),
        },
        None => {
            Left { a0: addr(a, i, 0).cast(), a1: addr(a, i + T, 0).cast(), row: 2 * a.rs, step: 64 }
        }
    };
    let (blocks_m, blocks_n) = (m.div_ceil(MC), n.div_ceil(NC));
    let out = Out(c);
    let task = |t: usize| {
        let (i0, j0) = ((t / blocks_n) * MC, (t % blocks_n) * NC);
        let (i1, j1) = ((i0 + MC).min(m), (j0 + NC).min(n));
        let mut edge = [0f32; 4 * TILE];
        // SAFETY: tile instructions on this thread only, between this configuration and the
        // release below.
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
        for i in (i0..i1).step_by(2 * T) {
            let a0 = left(i);
            for j in (j0..j1).step_by(2 * T) {
                let (b0, b1) = (pb.from((j / T) * kt * TILE), pb.from((j / T + 1) * kt * TILE));
                let (rows, cols) = ((2 * T).min(m - i), (2 * T).min(n - j));
                // SAFETY: the panels hold `kt` tiles each (padded to whole pairs of panels); the
                // block `(i, j)` lies in this task's part of `c`, or goes through `edge`.
                unsafe {
                    if rows == 2 * T && cols == 2 * T {
                        block(kt, a0, (b0, b1), out.ptr().add(i * ldc + j), ldc);
                    } else {
                        block(kt, a0, (b0, b1), edge.as_mut_ptr(), 2 * T);
                        for r in 0..rows {
                            let dst = out.ptr().add((i + r) * ldc + j);
                            std::ptr::copy_nonoverlapping(edge.as_ptr().add(r * 2 * T), dst, cols);
                        }
                    }
                }
            }
        }
        // SAFETY: returns the tiles to their initial state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    };
    if parallel {
        (0..blocks_m * blocks_n).into_par_iter().for_each(task);
    } else {
        (0..blocks_m * blocks_n).for_each(task);
    }
}

/// Most rows of `x` [`decode`] takes (one tile of `xᵀ` columns).
pub(super) const DECODE_ROWS: usize = T;
/// Weight rows per [`decode`] task.
const DECODE_TASK_ROWS: usize = 256;

/// `true` when [`decode`] can run `x (m × k) · b` with `b = wᵀ` (`k × n`) for a weight `w` whose
/// rows are contiguous (`b.rs == 1`): few rows of `x` (the decoding step of sampling), whole tiles
/// along `k` and `n`.
pub(super) fn decode_fits((m, n, k): (usize, usize, usize), b_rs: usize) -> bool {
    (1..=DECODE_ROWS).contains(&m) && k % (2 * T) == 0 && n % T == 0 && k > 0 && b_rs == 1
}

/// `c (m × n, row stride ldc) = x (m × k) · b` for `b = wᵀ`, `w` a row-major bf16 weight (`n × k`,
/// row stride `b.cs`) read straight from memory as the tiles' left operand (no packing: a
/// decoding step reads each weight once), times `xᵀ` packed into `k / 32` right-operand tiles that
/// stay in L1. Four groups of 16 weight rows share each `xᵀ` tile; each group's 16 × 16 product
/// (weight rows × rows of `x`) is transposed into `c`.
///
/// # Safety
/// [`available`] is `true`; [`decode_fits`] holds (for `b.rs`); `x` has a unit row or column
/// stride and addresses `m × k` readable elements, `b` `k × n`; `c` addresses `m × n` writable
/// elements at row stride `ldc ≥ n` that nothing else touches.
pub(super) unsafe fn decode(
    (m, n, k): (usize, usize, usize),
    x: Mat<u16>,
    b: Mat<u16>,
    c: *mut f32,
    ldc: usize,
    parallel: bool,
) {
    let kt = k / (2 * T);
    // SAFETY: the caller's bounds.
    let xt = unsafe { pack(m, k, x, (1, kt), true, false) };
    let (w, ldw) = (Mat { ptr: b.ptr, rs: b.cs, cs: 1 }, b.cs);
    let out = Out(c);
    let task = |s: usize| {
        let (r0, r1) = (s * DECODE_TASK_ROWS, ((s + 1) * DECODE_TASK_ROWS).min(n));
        let mut acc = [0f32; 4 * TILE];
        // SAFETY: tile instructions on this thread only, between this configuration and the
        // release below.
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
        let mut r = r0;
        while r < r1 {
            // Up to four groups of 16 rows; past the task's last row the kernel recomputes the
            // first group (its extra tiles are not read).
            let groups = ((r1 - r) / T).min(4);
            let rows: [*const u16; 4] =
                std::array::from_fn(|g| addr(w, r + if g < groups { g * T } else { 0 }, 0));
            // SAFETY: weight rows `r .. r + 16·groups ≤ n` (`n` is a multiple of 16), `kt` tiles
            // of `xᵀ`; `acc` holds four tiles.
            unsafe { decode_rows(kt, rows, ldw, xt.from(0), acc.as_mut_ptr()) };
            for g in 0..groups {
                for i in 0..T {
                    for j in 0..m {
                        // SAFETY: row `j < m`, column `r + 16g + i < n` of `c`, in this task's
                        // columns.
                        unsafe {
                            *out.ptr().add(j * ldc + r + g * T + i) = acc[g * TILE + i * T + j]
                        };
                    }
                }
            }
            r += groups * T;
        }
        // SAFETY: returns the tiles to their initial state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    };
    let tasks = n.div_ceil(DECODE_TASK_ROWS);
    if parallel {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Four tiles of 16 weight rows (tile `g` from `w[g]`, row stride `ldw` elements) times the `kt`
/// packed `xᵀ` tiles at `xt`, over the whole shared dimension, stored to `acc` (tile `g` at
/// `g · 256`, row stride 16 floats).
///
/// # Safety
/// The tiles are configured ([`CONFIG`]) on this thread; each `w[g]` addresses 16 rows of `32·kt`
/// readable elements at stride `ldw`; `xt` addresses `kt` tiles; `acc` 1024 writable floats;
/// `kt ≥ 1`.
#[inline(always)]
unsafe fn decode_rows(kt: usize, w: [*const u16; 4], ldw: usize, xt: *const u32, acc: *mut f32) {
    // SAFETY: the caller's contract; each iteration reads 64 bytes of each of the weight rows and
    // one `xᵀ` tile, the stores write the four tiles of `acc`.
    unsafe {
        asm!(
            zero_accumulators!(),
            "2:",
            "tileloadd tmm7, [{x} + {s64}]",
            "tileloadd tmm4, [{w0} + {ld}]",
            "tdpbf16ps tmm0, tmm4, tmm7",
            "tileloadd tmm5, [{w1} + {ld}]",
            "tdpbf16ps tmm1, tmm5, tmm7",
            "tileloadd tmm6, [{w2} + {ld}]",
            "tdpbf16ps tmm2, tmm6, tmm7",
            "tileloadd tmm4, [{w3} + {ld}]",
            "tdpbf16ps tmm3, tmm4, tmm7",
            "add {x}, 1024",
            "add {w0}, 64",
            "add {w1}, 64",
            "add {w2}, 64",
            "add {w3}, 64",
            "dec {kt}",
            "jnz 2b",
            "tilestored [{a0} + {s64}], tmm0",
            "tilestored [{a1} + {s64}], tmm1",
            "tilestored [{a2} + {s64}], tmm2",
            "tilestored [{a3} + {s64}], tmm3",
            x = inout(reg) xt => _,
            w0 = inout(reg) w[0] => _,
            w1 = inout(reg) w[1] => _,
            w2 = inout(reg) w[2] => _,
            w3 = inout(reg) w[3] => _,
            kt = inout(reg) kt => _,
            ld = in(reg) ldw * 2,
            s64 = in(reg) 64usize,
            a0 = in(reg) acc,
            a1 = in(reg) acc.add(TILE),
            a2 = in(reg) acc.add(2 * TILE),
            a3 = in(reg) acc.add(3 * TILE),
            options(nostack),
        );
    }
}
