//! Generation-time flow engine in plain Rust (f32 weights, f64 splines), independent of burn.
//!
//! Hidden units of every MADE are reordered by degree once, so that each unit reads a prefix of
//! the previous layer and each feature's outputs read a prefix of the last hidden layer. A
//! sequential pass (MAF sampling, IAF density) then computes, at step i, only the units of
//! degree i − 1 (whose inputs just became known) and the 3K − 1 outputs of feature i: the whole
//! D-step inversion costs one MADE evaluation, where nflows runs D full MADE passes. Masked
//! weights are skipped rather than multiplied by zero. Samples are processed in parallel
//! (rayon); each sample's arithmetic does not depend on the batch, so results are identical for
//! any batch size and thread count.

use super::{Flow, FlowConfig, FlowKind};
use crate::kernels::gemm::Packed;
use crate::kernels::simd::dot;
use crate::kernels::spline::{eval_many, SplineConfig};
use crate::twin::values;
use rayon::prelude::*;

struct Layer {
    /// rows × n_in, row-major (masked weights zero).
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
    /// Number of leading inputs each row reads.
    prefix: Vec<usize>,
}

impl Layer {
    #[inline]
    fn row(&self, r: usize, input: &[f32]) -> f32 {
        let p = self.prefix[r];
        self.b[r] + dot(&self.w[r * self.n_in..r * self.n_in + p], &input[..p])
    }
}

/// One MADE with degree-sorted hidden units.
struct FastMade {
    d: usize,
    p: usize,
    /// end[g] = number of hidden units with degree ≤ g (g = 0..=D).
    end: Vec<usize>,
    input: Layer,
    hidden: Vec<Layer>,
    output: Layer,
    /// The same layers packed for batched matrix products (one-pass evaluation, context).
    packed: PackedMade,
}

/// A MADE's layers as [`Packed`] panels: one pass over a batch is four matrix products.
struct PackedMade {
    input: Packed,
    context: Option<Packed>,
    hidden: Vec<Packed>,
    output: Packed,
}

impl Layer {
    fn pack(&self) -> Packed {
        Packed::new(&self.w, &self.b, self.n_in, Some(&self.prefix))
    }
}

impl FastMade {
    fn from_made(m: &super::made::Made, cfg: &FlowConfig) -> Self {
        let shape = cfg.made();
        let (d, h, p) = (shape.features, shape.hidden, shape.params_per_feature);
        let deg = shape.hidden_degrees();
        let mut order: Vec<usize> = (0..h).collect();
        order.sort_by_key(|&u| deg[u]);
        let mut end = vec![0usize; d + 1];
        for g in 0..=d {
            end[g] = deg.iter().filter(|&&x| x <= g).count();
        }
        // burn weights are [in, out]; transpose into rows, reorder rows and columns.
        let take = |lin: &burn::nn::Linear,
                    rows: &[usize],
                    cols: Option<&[usize]>,
                    n_in: usize,
                    n_out: usize|
         -> (Vec<f32>, Vec<f32>) {
            let w = values(lin.weight.val());
            let b = lin
                .bias
                .as_ref()
                .map(|b| values(b.val()))
                .unwrap_or_else(|| vec![0.0; n_out]);
            let mut out = Vec::with_capacity(rows.len() * n_in);
            for &r in rows {
                for c in 0..n_in {
                    let src = cols.map_or(c, |cs| cs[c]);
                    out.push(w[src * n_out + r]);
                }
            }
            (out, rows.iter().map(|&r| b[r]).collect())
        };
        let (w, b) = take(&m.input.linear, &order, None, d, h);
        let input = Layer {
            w,
            b,
            n_in: d,
            prefix: order.iter().map(|&u| deg[u].min(d)).collect(),
        };
        let context = m.context.as_ref().map(|c| {
            let (w, b) = take(c, &order, None, shape.context, h);
            Layer {
                w,
                b,
                n_in: shape.context,
                prefix: vec![shape.context; h],
            }
        });
        let hidden: Vec<Layer> = m
            .hidden
            .iter()
            .map(|l| {
                let (w, b) = take(&l.linear, &order, Some(&order), h, h);
                Layer {
                    w,
                    b,
                    n_in: h,
                    prefix: order.iter().map(|&u| end[deg[u]]).collect(),
                }
            })
            .collect();
        let rows: Vec<usize> = (0..d * p).collect();
        let (w, b) = take(&m.output.linear, &rows, Some(&order), h, d * p);
        let output = Layer {
            w,
            b,
            n_in: h,
            prefix: (0..d * p).map(|r| end[r / p]).collect(),
        };
        let packed = PackedMade {
            input: input.pack(),
            context: context.as_ref().map(Layer::pack),
            hidden: hidden.iter().map(Layer::pack).collect(),
            output: output.pack(),
        };
        FastMade {
            d,
            p,
            end,
            input,
            hidden,
            output,
            packed,
        }
    }

    /// Multiply-adds of one evaluation for one sample, masked weights excluded.
    fn macs(&self) -> usize {
        let sum = |l: &Layer| l.prefix.iter().sum::<usize>();
        sum(&self.input)
            + self
                .packed
                .context
                .as_ref()
                .map_or(0, |c| c.d_in() * c.d_out())
            + self.hidden.iter().map(sum).sum::<usize>()
            + sum(&self.output)
    }

    fn group(&self, g: usize) -> std::ops::Range<usize> {
        let lo = if g == 0 { 0 } else { self.end[g - 1] };
        lo..self.end[g]
    }
}

/// Scratch space for a chunk of up to `cap` samples (sample-major buffers).
struct Work {
    cap: usize,
    /// Hidden activations per layer, cap × H.
    h: Vec<Vec<f32>>,
    /// Context term, cap × H.
    ctx: Vec<f32>,
    /// Spline parameters of the chunk's splines, row-major (P per spline).
    params: Vec<f32>,
    /// Spline log-derivatives, cap × D.
    sld: Vec<f32>,
    /// One feature of each sample, in and out (sequential pass), cap.
    a1: Vec<f32>,
    b1: Vec<f32>,
    /// Block input and output, cap × D.
    a: Vec<f32>,
    b: Vec<f32>,
}

/// A flow ready for generation.
pub struct FastFlow {
    /// Configuration.
    pub cfg: FlowConfig,
    spline: SplineConfig,
    blocks: Vec<FastMade>,
    perms: Vec<Vec<usize>>,
}

/// Most samples per chunk: each weight panel is applied to all the chunk's samples (in tiles of
/// 12 on AVX-512) while it is in cache; 48 keeps a chunk's activations and spline parameters in
/// L2.
const CHUNK: usize = 48;

/// The flow's fast twin: the degree-sorted sampler and density on the shared kernels.
impl crate::twin::Twin for Flow {
    type Fast = FastFlow;
    fn twin(&self) -> FastFlow {
        FastFlow::from_flow(self)
    }
}

impl FastFlow {
    /// Copies the weights of `flow`.
    pub fn from_flow(flow: &Flow) -> Self {
        let cfg = flow.cfg.clone();
        FastFlow {
            spline: cfg.spline(),
            blocks: flow
                .net
                .made
                .iter()
                .map(|m| FastMade::from_made(m, &cfg))
                .collect(),
            perms: cfg.permutations(),
            cfg,
        }
    }

    fn work(&self, cap: usize) -> Work {
        let h = self.cfg.hidden;
        let d = self.cfg.features;
        Work {
            cap,
            h: vec![vec![0.0; cap * h]; self.cfg.n_hidden + 1],
            ctx: vec![0.0; cap * h],
            params: vec![0.0; cap * d * (3 * self.cfg.bins - 1)],
            sld: vec![0.0; cap * d],
            a1: vec![0.0; cap],
            b1: vec![0.0; cap],
            a: vec![0.0; cap * d],
            b: vec![0.0; cap * d],
        }
    }

    fn context_term(&self, m: &FastMade, ctx: &[f32], n: usize, w: &mut Work) {
        let (h, c) = (self.cfg.hidden, self.cfg.context);
        match &m.packed.context {
            Some(layer) => layer.forward(&ctx[..n * c], &mut w.ctx[..n * h], None, true),
            None => w.ctx[..n * h].iter_mut().for_each(|v| *v = 0.0),
        }
    }

    /// Computes the hidden units of degree group g (all layers) for n samples whose MADE input
    /// is `inp` (n × D).
    fn units(&self, m: &FastMade, g: usize, inp: &[f32], n: usize, w: &mut Work) {
        let (h, d) = (self.cfg.hidden, self.cfg.features);
        let range = m.group(g);
        if range.is_empty() {
            return;
        }
        for u in range.clone() {
            for b in 0..n {
                w.h[0][b * h + u] =
                    (m.input.row(u, &inp[b * d..(b + 1) * d]) + w.ctx[b * h + u]).max(0.0);
            }
        }
        for (l, layer) in m.hidden.iter().enumerate() {
            let (prev, cur) = w.h.split_at_mut(l + 1);
            for u in range.clone() {
                for b in 0..n {
                    cur[0][b * h + u] = layer.row(u, &prev[l][b * h..(b + 1) * h]).max(0.0);
                }
            }
        }
    }

    /// One block for n samples. `one_pass`: the MADE reads `src` (θ = MADE(src)) and
    /// `dst_i = s^±(src_i)`; otherwise the MADE reads `dst` as it is produced (sequential).
    /// `forward`: apply s (else s⁻¹). Adds Σ log|dz/dx| to `ld`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        m: &FastMade,
        ctx: &[f32],
        src: &[f32],
        dst: &mut [f32],
        n: usize,
        one_pass: bool,
        forward: bool,
        ld: &mut [f64],
        w: &mut Work,
    ) {
        let (h, d) = (self.cfg.hidden, self.cfg.features);
        self.context_term(m, ctx, n, w);
        let last = m.hidden.len();
        if one_pass {
            // The MADE reads a known input: four matrix products over the chunk, then splines.
            let (nh, pk) = (n * h, &m.packed);
            pk.input
                .forward(&src[..n * d], &mut w.h[0][..nh], Some(&w.ctx[..nh]), true);
            for (l, layer) in pk.hidden.iter().enumerate() {
                let (prev, cur) = w.h.split_at_mut(l + 1);
                layer.forward(&prev[l][..nh], &mut cur[0][..nh], None, true);
            }
            // Spline j = b·D + i (feature i of sample b) has parameters θ[j·P..(j+1)·P].
            let np = n * d * m.p;
            pk.output
                .forward(&w.h[last][..nh], &mut w.params[..np], None, false);
            eval_many(
                &self.spline,
                &w.params[..np],
                &src[..n * d],
                &mut dst[..n * d],
                &mut w.sld[..n * d],
                !forward,
            );
            for (b, l) in ld[..n].iter_mut().enumerate() {
                *l += w.sld[b * d..(b + 1) * d]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            return;
        }
        for i in 0..m.d {
            self.units(m, i, dst, n, w);
            // Feature i of every sample: its spline parameters, then all splines at once.
            for b in 0..n {
                let hl = &w.h[last][b * h..(b + 1) * h];
                for k in 0..m.p {
                    w.params[b * m.p + k] = m.output.row(i * m.p + k, hl);
                }
                w.a1[b] = src[b * d + i];
            }
            eval_many(
                &self.spline,
                &w.params[..n * m.p],
                &w.a1[..n],
                &mut w.b1[..n],
                &mut w.sld[..n],
                !forward,
            );
            for b in 0..n {
                dst[b * d + i] = w.b1[b];
                ld[b] += w.sld[b] as f64;
            }
        }
    }

    /// Runs n ≤ cap samples through all blocks (`sample`: z → x, else x → z).
    fn run_chunk(
        &self,
        inp: &[f32],
        ctx: &[f32],
        out: &mut [f32],
        ld: &mut [f64],
        n: usize,
        sample: bool,
        w: &mut Work,
    ) {
        let d = self.cfg.features;
        let nb = self.blocks.len();
        let maf = self.cfg.kind == FlowKind::Maf;
        let mut s = std::mem::take(&mut w.a);
        let mut t = std::mem::take(&mut w.b);
        s[..n * d].copy_from_slice(inp);
        ld.iter_mut().for_each(|v| *v = 0.0);
        let permute = |p: &[usize], from: &[f32], to: &mut [f32], inverse: bool| {
            for b in 0..n {
                let (f, t) = (&from[b * d..(b + 1) * d], &mut to[b * d..(b + 1) * d]);
                for (j, &pj) in p.iter().enumerate() {
                    if inverse {
                        t[pj] = f[j];
                    } else {
                        t[j] = f[pj];
                    }
                }
            }
        };
        if sample {
            // z -> x, blocks in reverse; undo the permutation after block k first.
            for k in (0..nb).rev() {
                if let Some(p) = self.perms.get(k) {
                    permute(p, &s, &mut t, true);
                    std::mem::swap(&mut s, &mut t);
                }
                self.block(&self.blocks[k], ctx, &s, &mut t, n, !maf, false, ld, w);
                std::mem::swap(&mut s, &mut t);
            }
        } else {
            for k in 0..nb {
                self.block(&self.blocks[k], ctx, &s, &mut t, n, maf, true, ld, w);
                match self.perms.get(k) {
                    Some(p) => permute(p, &t, &mut s, false),
                    None => std::mem::swap(&mut s, &mut t),
                }
            }
        }
        out.copy_from_slice(&s[..n * d]);
        w.a = s;
        w.b = t;
    }

    fn run(&self, inp: &[f32], ctx: &[f32], sample: bool) -> (Vec<f32>, Vec<f64>) {
        let (d, c) = (self.cfg.features, self.cfg.context);
        let n = inp.len() / d;
        assert_eq!(inp.len(), n * d, "input is not a multiple of {d} features");
        assert_eq!(ctx.len(), n * c, "context is not {n} × {c}");
        let mut out = vec![0.0f32; n * d];
        let mut ld = vec![0.0f64; n];
        // A multiple of the thread count of equal chunks, at most CHUNK samples each. Each
        // sample's arithmetic is the same whatever chunk it lands in.
        let threads = rayon::current_num_threads().max(1);
        let chunks = threads * n.div_ceil(threads * CHUNK).max(1);
        let chunk = n.div_ceil(chunks).max(1);
        out.par_chunks_mut(chunk * d)
            .zip(ld.par_chunks_mut(chunk))
            .enumerate()
            .for_each_init(
                || self.work(chunk),
                |w, (ci, (o, l))| {
                    let m = l.len();
                    let r = ci * chunk;
                    debug_assert!(m <= w.cap);
                    self.run_chunk(
                        &inp[r * d..(r + m) * d],
                        &ctx[r * c..(r + m) * c],
                        o,
                        l,
                        m,
                        sample,
                        w,
                    );
                },
            );
        (out, ld)
    }

    /// Multiply-adds (masked weights excluded) of one sample's pass through every block: the
    /// network work of `sample_from_base` or `log_prob` per row, for reporting FLOP rates.
    pub fn macs_per_sample(&self) -> usize {
        self.blocks.iter().map(FastMade::macs).sum()
    }

    /// x = f⁻¹(z | ctx) for row-major `z` (N × D) and `ctx` (N × C); also returns Σ log|dz/dx|
    /// per row.
    pub fn sample_from_base(&self, z: &[f32], ctx: &[f32]) -> (Vec<f32>, Vec<f64>) {
        self.run(z, ctx, true)
    }

    /// z = f(x | ctx) and log p(x | ctx) per row.
    pub fn log_prob(&self, x: &[f32], ctx: &[f32]) -> (Vec<f32>, Vec<f64>) {
        let (z, ld) = self.run(x, ctx, false);
        let d = self.cfg.features;
        let c = 0.5 * (2.0 * std::f64::consts::PI).ln() * d as f64;
        let lp = z
            .chunks(d)
            .zip(&ld)
            .map(|(zr, l)| l - c - 0.5 * zr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .collect();
        (z, lp)
    }
}
