//! Matrix multiplication: C = alpha·op(A)·op(B) + beta·C, batched.
//!
//! A is f32; B (usually a weight) is f32, bf16 or f16 and is read in its
//! stored dtype; accumulation and C are f32. Either operand may be
//! transposed, so a Linear layer y = x·Wᵀ (W stored [out, in]) and both of
//! its gradients, dx = dy·W and dW = dyᵀ·x, are single calls without copies.
//! `beta = 1` accumulates into C (gradient accumulation).
//!
//! Paths: a workgroup-tiled one for GPUs, register-tiled direct ones for CPU
//! adapters, and a cooperative-matrix (tensor core) one wherever the adapter
//! offers 16×16×16 (or 8×8×8) f16·f16→f32 fragments. The cooperative path
//! rounds A and B to f16 while staging (sums stay f32), the precision of
//! PyTorch's f16 autocast; it is checked against the portable path once per
//! device before first use, and `BOOMGPU_MATMUL=tiled` turns it off.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::shape_bail;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    off_a: u32,
    off_c: u32,
    /// Q8 B: word offset of its scales in B's binding.
    b_scales: u32,
    _pad: [u32; 2],
}

/// How to combine the operands.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    /// 0 overwrites C; 1 adds to it.
    pub beta: f32,
    /// Force a kernel (tests compare them); None picks by device.
    pub path: Option<Path>,
}

impl Gemm {
    pub fn new(trans_a: bool, trans_b: bool) -> Self {
        Gemm {
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            path: None,
        }
    }
    pub fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }
}

/// The resolved problem: `batch` products of op(A) [m, k] and op(B) [k, n].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    /// Shape of C.
    pub out_shape: Vec<usize>,
}

fn split(shape: &[usize]) -> (usize, usize, usize, &[usize]) {
    let r = shape.len();
    let lead = &shape[..r - 2];
    (lead.iter().product(), shape[r - 2], shape[r - 1], lead)
}

/// Work out M, N, K and the batching from the operand shapes.
pub fn problem(a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Result<Problem> {
    if a.len() < 2 || b.len() < 2 {
        shape_bail!("matmul needs operands of at least 2 dimensions, got {a:?} and {b:?}");
    }
    let (ba, ra, ca, lead_a) = split(a);
    let (bb, rb, cb, lead_b) = split(b);
    let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
    if bb == 1 && !trans_a {
        // One weight for all: fold A's leading dimensions into M.
        let m = ba * ra;
        if ca != kb {
            shape_bail!(
                "matmul: inner dimensions differ: A {a:?}{} has K = {ca}, B {b:?}{} has K = {kb}",
                if trans_a { "ᵀ" } else { "" },
                if trans_b { "ᵀ" } else { "" }
            );
        }
        let mut out_shape = lead_a.to_vec();
        out_shape.extend([ra, n]);
        return Ok(Problem {
            batch: 1,
            m,
            n,
            k: ca,
            stride_a: 0,
            stride_b: 0,
            out_shape,
        });
    }
    let (m, ka) = if trans_a { (ca, ra) } else { (ra, ca) };
    if ka != kb {
        shape_bail!(
            "matmul: inner dimensions differ: A {a:?}{} has K = {ka}, B {b:?}{} has K = {kb}",
            if trans_a { "ᵀ" } else { "" },
            if trans_b { "ᵀ" } else { "" }
        );
    }
    if ba != bb && ba != 1 && bb != 1 {
        shape_bail!("matmul: batch sizes {ba} and {bb} differ ({a:?} and {b:?})");
    }
    let batch = ba.max(bb);
    let mut out_shape = if ba >= bb {
        lead_a.to_vec()
    } else {
        lead_b.to_vec()
    };
    out_shape.extend([m, n]);
    Ok(Problem {
        batch,
        m,
        n,
        k: ka,
        stride_a: if ba == 1 { 0 } else { ra * ca },
        stride_b: if bb == 1 { 0 } else { rb * cb },
        out_shape,
    })
}

/// Which kernel computes the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Tiles staged in workgroup memory: the path for GPUs.
    Tiled,
    /// Straight from global memory, 4×4 per invocation: faster on CPU
    /// adapters, where barriers are expensive.
    Direct,
    /// Direct, with 4-wide vector loads multiplied as 4×4 matrices; used
    /// instead of `Direct` when the contiguous dimensions are multiples of 4.
    Direct4,
    /// Like `Direct4` with 8×8 outputs per invocation.
    Direct8,
    /// Cooperative matrices (tensor cores): f16 operands, f32 sums. Needs
    /// `Capabilities::coop_matmul_size`.
    Coop,
}

impl Path {
    fn entry(self) -> &'static str {
        match self {
            Path::Tiled => "matmul",
            Path::Direct => "matmul_direct",
            Path::Direct4 => "matmul_direct4",
            Path::Direct8 => "matmul_direct8",
            Path::Coop => "matmul_coop",
        }
    }
    /// Columns and rows of C per workgroup.
    fn tile(self) -> [u32; 2] {
        match self {
            Path::Tiled => [64, 64],
            Path::Direct | Path::Direct4 => [32, 32],
            Path::Direct8 => [64, 64],
            Path::Coop => [0, 0],
        }
    }
}

/// Shape and launch of the cooperative kernel on this device: the shader,
/// the C tile edge (4 fragments) and the workgroup size (4 subgroups).
fn coop_launch(gpu: &crate::gpu::Gpu) -> Result<(&'static str, u32, u32)> {
    let caps = &gpu.caps;
    let Some(s) = caps.coop_matmul_size() else {
        shape_bail!(
            "matmul: the cooperative-matrix path needs 16×16×16 or 8×8×8 f16·f16→f32 fragments, \
             which {} does not offer",
            gpu.info.name
        );
    };
    let shader = if s == 16 {
        "matmul_coop16"
    } else {
        "matmul_coop8"
    };
    let wg = 4 * caps.subgroup_max_size.max(1);
    if wg > caps.limits.max_compute_invocations_per_workgroup {
        shape_bail!(
            "matmul: the cooperative path needs {wg} invocations per workgroup (4 subgroups of {}), \
             {} allows {}",
            caps.subgroup_max_size,
            gpu.info.name,
            caps.limits.max_compute_invocations_per_workgroup
        );
    }
    Ok((shader, 4 * s, wg))
}

/// Whether the cooperative path may be used by default on this device: it
/// is offered, and on first call it reproduces the portable path on an
/// awkward problem (every layout, bf16 weights, accumulation). The outcome
/// is kept for the device's lifetime; a failure is reported once.
pub fn coop_ready(gpu: &crate::gpu::Gpu) -> bool {
    if gpu.caps.coop_matmul_size().is_none() {
        return false;
    }
    *gpu.coop_matmul_ok.get_or_init(|| match self_check(gpu) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "boomgpu: not using cooperative-matrix matmul on {}: {e}",
                gpu.info.name
            );
            false
        }
    })
}

fn self_check(gpu: &crate::gpu::Gpu) -> Result<()> {
    let (m, n, k) = (37usize, 45usize, 70usize);
    // Values exact in f16, so both paths see the same operands.
    let val = |i: usize, s: usize| ((i * s + 3) % 17) as f32 / 8.0 - 1.0;
    let a: Vec<f32> = (0..m * k).map(|i| val(i, 5)).collect();
    let bv: Vec<half::bf16> = (0..k * n)
        .map(|i| half::bf16::from_f32(val(i, 7)))
        .collect();
    let c0: Vec<f32> = (0..m * n).map(|i| val(i, 3)).collect();
    for (trans_a, trans_b) in [(false, true), (false, false), (true, false), (true, true)] {
        let a_shape = if trans_a { [k, m] } else { [m, k] };
        let b_shape = if trans_b { [n, k] } else { [k, n] };
        let ta = gpu.upload_f32("coop.check.a", &a_shape, &a)?;
        let tb = gpu.upload_bf16("coop.check.b", &b_shape, &bv)?;
        let mut outs = Vec::new();
        for path in [Path::Tiled, Path::Coop] {
            let tc = gpu.upload_f32("coop.check.c", &[m, n], &c0)?;
            let mut rec = gpu.recorder();
            let mut g = Gemm::new(trans_a, trans_b);
            g.alpha = 0.5;
            g.beta = 1.0;
            g.path = Some(path);
            matmul_into(&mut rec, &ta, &tb, &tc, g)?;
            rec.run()?;
            outs.push(gpu.read_f32(&tc)?);
        }
        let worst = outs[0]
            .iter()
            .zip(&outs[1])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // Same f16-exact operands, f32 sums in another order.
        if worst > 1e-4 || worst.is_nan() {
            return Err(crate::error::Error::Gpu(format!(
                "its result differs from the portable path by {worst} \
                 (transposes {trans_a}/{trans_b}, {m}×{n}×{k})"
            )));
        }
    }
    Ok(())
}

/// The device's default path; `BOOMGPU_MATMUL=tiled|direct|coop|portable`
/// overrides it (`direct` vectorises where the shapes allow; `coop` skips
/// the self-check; `portable` is the default without cooperative matrices). Adapters with cooperative matrices use them once
/// `coop_ready` has passed, CPU adapters without them the direct path.
pub fn choose_path(gpu: &crate::gpu::Gpu) -> Path {
    let portable = if gpu.info.device_type == wgpu::DeviceType::Cpu {
        Path::Direct
    } else {
        Path::Tiled
    };
    match std::env::var("BOOMGPU_MATMUL").as_deref() {
        Ok("tiled") => Path::Tiled,
        Ok("direct") => Path::Direct,
        Ok("coop") => Path::Coop,
        Ok("portable") => portable,
        _ if gpu.info.device_type != wgpu::DeviceType::Cpu && coop_ready(gpu) => Path::Coop,
        _ => portable,
    }
}

/// Can the vectorised path load every block as whole vec4s?
fn vec4_ok(pr: &Problem, lda: usize, ldb: usize, g: Gemm) -> bool {
    let m4 = |x: usize| x.is_multiple_of(4);
    m4(pr.k)
        && m4(lda)
        && m4(ldb)
        && m4(pr.stride_a)
        && m4(pr.stride_b)
        && (!g.trans_a || m4(pr.m))
        && (g.trans_b || m4(pr.n))
}

fn dtype_code(d: DType) -> Result<f64> {
    Ok(match d {
        DType::F32 => 0.0,
        DType::BF16 => 1.0,
        DType::F16 => 2.0,
        DType::Q8 => 3.0,
        DType::U32 => shape_bail!("matmul: B must be f32, bf16, f16 or q8, not u32"),
    })
}

/// C = op(A)·op(B) into a new tensor.
pub fn matmul(
    rec: &mut Recorder,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor> {
    let pr = problem(a.shape(), b.shape(), trans_a, trans_b)?;
    let c = Tensor::empty(rec.gpu(), "matmul.out", &pr.out_shape, DType::F32)?;
    matmul_into(rec, a, b, &c, Gemm::new(trans_a, trans_b))?;
    Ok(c)
}

/// C = alpha·op(A)·op(B) + beta·C into an existing tensor.
pub fn matmul_into(rec: &mut Recorder, a: &Tensor, b: &Tensor, c: &Tensor, g: Gemm) -> Result<()> {
    let pr = problem(a.shape(), b.shape(), g.trans_a, g.trans_b)?;
    if a.dtype() != DType::F32 || c.dtype() != DType::F32 {
        shape_bail!(
            "matmul: A and C must be f32 (A is {}, C is {})",
            a.dtype().name(),
            c.dtype().name()
        );
    }
    if c.numel() != pr.batch * pr.m * pr.n {
        shape_bail!(
            "matmul: C has shape {:?}, the product has shape {:?}",
            c.shape(),
            pr.out_shape
        );
    }
    // Row strides are the stored last dimensions in every layout.
    let (lda, ldb) = (a.dim(-1), b.dim(-1));
    launch(rec, (a, b, c), &pr, [lda, ldb, pr.n], [0, 0], g)
}

/// A matrix inside a larger f32 tensor: `rows × cols` elements starting at
/// element `offset`, consecutive rows `ld` elements apart. A block of
/// vocabulary columns of a logits chunk, or a chunk of token rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl Region {
    /// The whole of a 2-D (or flattened) tensor of `cols` columns.
    pub fn whole(t: &Tensor) -> Region {
        let cols = t.shape().last().copied().unwrap_or(1);
        Region {
            offset: 0,
            rows: t.numel().checked_div(cols).unwrap_or(0),
            cols,
            ld: cols,
        }
    }
    /// Rows `start..start + n` of this region.
    pub fn rows(self, start: usize, n: usize) -> Region {
        Region {
            offset: self.offset + start * self.ld,
            rows: n,
            ..self
        }
    }
    /// Columns `start..start + n` of this region.
    pub fn cols(self, start: usize, n: usize) -> Region {
        Region {
            offset: self.offset + start,
            cols: n,
            ..self
        }
    }
    fn check(&self, what: &str, t: &Tensor) -> Result<()> {
        let end = self
            .rows
            .checked_sub(1)
            .map(|r| self.offset + r * self.ld + self.cols);
        if t.dtype() != DType::F32
            || self.cols > self.ld
            || end.is_some_and(|e| e > t.numel())
            || self.offset + self.rows * self.ld > u32::MAX as usize
        {
            shape_bail!("matmul: {what} region {self:?} does not lie inside f32 {t:?}");
        }
        Ok(())
    }
}

/// C[rc] = alpha·op(A[ra])·op(B) + beta·C[rc]: the product of regions of
/// A and C (stored `[m, k]` / `[k, m]` with `trans_a`, and `[m, n]`) with
/// the whole of B (a weight or a block of one). One launch, no copies.
pub fn matmul_region(
    rec: &mut Recorder,
    (a, ra): (&Tensor, Region),
    b: &Tensor,
    (c, rc): (&Tensor, Region),
    g: Gemm,
) -> Result<()> {
    ra.check("A", a)?;
    rc.check("C", c)?;
    let pr = problem(&[ra.rows, ra.cols], b.shape(), g.trans_a, g.trans_b)?;
    if b.shape().len() != 2 || pr.m != rc.rows || pr.n != rc.cols {
        shape_bail!(
            "matmul: a C region of {}×{} for a product of {}×{} (B {:?})",
            rc.rows,
            rc.cols,
            pr.m,
            pr.n,
            b.shape()
        );
    }
    launch(
        rec,
        (a, b, c),
        &pr,
        [ra.ld, b.dim(-1), rc.ld],
        [ra.offset, rc.offset],
        g,
    )
}

/// out[:, block columns] = x·blockᵀ for a weight `[out, in]` held as
/// blocks of consecutive rows, each given with its first row: one product
/// per block, each writing its columns of `out` (the LM head over a
/// vocabulary in blocks, a layer matrix over the binding limit).
pub fn matmul_row_blocks<'t>(
    rec: &mut Recorder,
    x: (&Tensor, Region),
    blocks: impl IntoIterator<Item = (usize, &'t Tensor)>,
    out: (&Tensor, Region),
) -> Result<()> {
    for (first, w) in blocks {
        let cols = out.1.cols(first, w.dim(0));
        matmul_region(rec, x, w, (out.0, cols), Gemm::new(false, true))?;
    }
    Ok(())
}

/// The input gradient of [`matmul_row_blocks`]: dx = Σ dy[:, block
/// columns]·block, written over the `dx` region (the first block
/// overwrites, the rest add).
pub fn matmul_row_blocks_dx<'t>(
    rec: &mut Recorder,
    dy: (&Tensor, Region),
    blocks: impl IntoIterator<Item = (usize, &'t Tensor)>,
    dx: (&Tensor, Region),
) -> Result<()> {
    for (i, (first, w)) in blocks.into_iter().enumerate() {
        let cols = dy.1.cols(first, w.dim(0));
        let g = Gemm {
            beta: if i == 0 { 0.0 } else { 1.0 },
            ..Gemm::new(false, false)
        };
        matmul_region(rec, (dy.0, cols), w, dx, g)?;
    }
    Ok(())
}

fn launch(
    rec: &mut Recorder,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    pr: &Problem,
    [lda, ldb, ldc]: [usize; 3],
    [off_a, off_c]: [usize; 2],
    g: Gemm,
) -> Result<()> {
    if pr.m == 0 || pr.n == 0 {
        return Ok(());
    }
    let p = Params {
        m: pr.m as u32,
        n: pr.n as u32,
        k: pr.k as u32,
        lda: lda as u32,
        ldb: ldb as u32,
        ldc: ldc as u32,
        stride_a: pr.stride_a as u32,
        stride_b: pr.stride_b as u32,
        stride_c: (pr.m * pr.n) as u32,
        alpha: g.alpha,
        beta: g.beta,
        off_a: off_a as u32,
        off_c: off_c as u32,
        b_scales: if b.dtype() == DType::Q8 {
            crate::gpu::tensor::q8::scales_word(b.numel()) as u32
        } else {
            0
        },
        _pad: [0; 2],
    };
    // The vector paths load A four elements at a time from its start.
    let vec4_ok = |pr: &Problem, lda, ldb, g| off_a.is_multiple_of(4) && vec4_ok(pr, lda, ldb, g);
    let gpu = rec.gpu();
    let path = match g.path {
        Some(Path::Direct4 | Path::Direct8) if !vec4_ok(pr, lda, ldb, g) => Path::Direct,
        Some(p) => p,
        None => match choose_path(gpu) {
            Path::Direct if vec4_ok(pr, lda, ldb, g) => {
                match std::env::var("BOOMGPU_MATMUL_TILE").as_deref() {
                    Ok("4") => Path::Direct4,
                    _ => Path::Direct8,
                }
            }
            p => p,
        },
    };
    if path == Path::Coop {
        let (shader, tile, wg) = coop_launch(gpu)?;
        let k = gpu.kernel_with(
            shader,
            path.entry(),
            &[
                ("TRANS_A", g.trans_a as u32 as f64),
                ("TRANS_B", g.trans_b as u32 as f64),
                ("B_DTYPE", dtype_code(b.dtype())?),
                ("WG", wg as f64),
            ],
        )?;
        let groups = [
            (pr.n as u32).div_ceil(tile),
            (pr.m as u32).div_ceil(tile),
            pr.batch as u32,
        ];
        return rec.dispatch(
            &k,
            &[("a", a), ("b", b), ("c", c)],
            bytemuck::bytes_of(&p),
            groups,
        );
    }
    let k = gpu.kernel_with(
        "matmul",
        path.entry(),
        &[
            ("TRANS_A", g.trans_a as u32 as f64),
            ("TRANS_B", g.trans_b as u32 as f64),
            ("B_DTYPE", dtype_code(b.dtype())?),
        ],
    )?;
    let tile = path.tile();
    let groups = [
        (pr.n as u32).div_ceil(tile[0]),
        (pr.m as u32).div_ceil(tile[1]),
        pr.batch as u32,
    ];
    rec.dispatch(
        &k,
        &[
            ("a", a),
            ("b", b),
            ("c", c),
            ("a4", a),
            ("b4", b),
            ("b2", b),
        ],
        bytemuck::bytes_of(&p),
        groups,
    )
}

pub mod cpu {
    /// op(A)·op(B) for one batch entry, accumulated in f64. A is [m, k]
    /// ([k, m] if trans_a), B is [k, n] ([n, k] if trans_b).
    pub fn matmul(
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for t in 0..k {
                    let av = if trans_a { a[t * m + i] } else { a[i * k + t] };
                    let bv = if trans_b { b[j * k + t] } else { b[t * n + j] };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn shapes_resolve() {
        // Linear layer: [B, T, K] · Wᵀ with W [N, K] folds B·T into M.
        let p = problem(&[2, 5, 8], &[3, 8], false, true).unwrap();
        assert_eq!((p.batch, p.m, p.n, p.k), (1, 10, 3, 8));
        assert_eq!(p.out_shape, vec![2, 5, 3]);
        // Weight gradient: dyᵀ·x = [N, M]·[M, K].
        let p = problem(&[10, 3], &[10, 8], true, false).unwrap();
        assert_eq!((p.batch, p.m, p.n, p.k), (1, 3, 8, 10));
        // Batched.
        let p = problem(&[4, 5, 6], &[4, 6, 7], false, false).unwrap();
        assert_eq!(
            (p.batch, p.m, p.n, p.k, p.stride_a, p.stride_b),
            (4, 5, 7, 6, 30, 42)
        );
        assert!(problem(&[4, 5, 6], &[3, 6, 7], false, false).is_err());
        assert!(problem(&[5, 6], &[7, 8], false, false).is_err());
        assert!(problem(&[5], &[5, 8], false, false).is_err());
    }
}
