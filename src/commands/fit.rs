//! `--fit SIZE` (eval, patch, chat): the largest size of a pair whose
//! weights (in their stored dtypes, from the checkpoint headers) and f32
//! KV cache at the chosen context fit in SIZE, with the arithmetic. Needs
//! no GPU: it reads only the headers, as `boomgpu plan` does.

use super::order::OrderChoice;
use super::patch::Pair;
use super::plan::{rows, Row};
use crate::boomerang::PatchOrder;
use crate::error::{Error, Result};
use crate::gpu::format_bytes;

/// `SIZE` of `--fit`: `300MiB`, `1.5GiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64> {
    crate::gpu::device::parse_bytes(s).ok_or_else(|| {
        Error::Invalid(format!(
            "--fit {s}: expected bytes, or a number with KiB, MiB or GiB (e.g. 300MiB), of at least 1KiB"
        ))
    })
}

/// The size chosen by `--fit` and why.
#[derive(Clone, Debug)]
pub struct Fit {
    /// The `--layers` value.
    pub k: usize,
    /// What was chosen and the arithmetic, for the user.
    pub report: String,
}

/// KV cache bytes of `layers` layers at `ctx` positions, K and V in f16
/// (the cache chat and serve keep unless `--kv-dtype f32`).
pub fn kv_bytes(pair: &Pair, layers: usize, ctx: usize) -> u64 {
    let c = &pair.teacher_cfg;
    (layers * 2 * ctx * c.num_kv_heads * c.head_dim * crate::gpu::DType::F16.size()) as u64
}

fn label(r: &Row) -> String {
    match r.plan.is_teacher {
        true => "the teacher".into(),
        false => r.plan.label(),
    }
}

fn need(pair: &Pair, r: &Row, ctx: usize) -> (u64, u64) {
    (r.size.bytes, kv_bytes(pair, r.plan.num_layers(), ctx))
}

/// The largest `--layers K` of `order` whose weights and KV cache at
/// `ctx` positions fit in `budget` bytes; refused, with the smallest
/// size's numbers, when none does.
pub fn choose(pair: &Pair, order: &PatchOrder, budget: u64, ctx: usize) -> Result<Fit> {
    let all = rows(pair, order)?;
    let line = |r: &Row| {
        let (w, kv) = need(pair, r, ctx);
        format!(
            "{} ({} layers, {:.1}M parameters): weights {} + KV cache {} at {ctx} positions = {}",
            label(r),
            r.plan.num_layers(),
            r.size.params as f64 / 1e6,
            format_bytes(w),
            format_bytes(kv),
            format_bytes(w + kv)
        )
    };
    let fits = |r: &&Row| {
        let (w, kv) = need(pair, r, ctx);
        w + kv <= budget
    };
    // Sizes grow with K; take the largest that fits.
    let Some(best) = all.iter().rev().find(fits) else {
        let smallest = all
            .first()
            .ok_or_else(|| Error::Invalid("the pair has no sizes".into()))?;
        return Err(Error::Invalid(format!(
            "--fit {}: even the smallest size does not fit: {}; raise the budget or lower the context",
            format_bytes(budget),
            line(smallest)
        )));
    };
    let mut report = format!(
        "--fit {}: --layers {} is {}",
        format_bytes(budget),
        best.plan.k,
        line(best)
    );
    if let Some(next) = all.iter().find(|r| r.plan.k == best.plan.k + 1) {
        let (w, kv) = need(pair, next, ctx);
        report.push_str(&format!(
            "; the next size, {}, needs {}",
            label(next),
            format_bytes(w + kv)
        ));
    }
    Ok(Fit {
        k: best.plan.k,
        report,
    })
}

/// The default context of `chat` (and of `--fit`'s KV cache) for a model
/// of `max_positions`: at most 4,096 positions.
pub fn default_ctx(max_positions: usize) -> usize {
    max_positions.min(4096)
}

/// `--fit SIZE` for a pair given by reference: opens the headers, takes
/// the order the command will follow and the chat's default context
/// unless `ctx` is given, and chooses. An order still to be searched
/// (`--order auto --calibration`) is counted as the reference order of
/// its base: its sizes have the same layers and bytes at every `k` but
/// where a unit holds leading or trailing pruned layers
/// (`--keep-first 0`, `--keep-last 0`).
pub fn for_pair(
    teacher: &str,
    student: &str,
    params: Option<crate::boomerang::PruneParams>,
    choice: &OrderChoice,
    size: &str,
    ctx: Option<usize>,
) -> Result<Fit> {
    let budget = parse_size(size)?;
    let pair = Pair::open(teacher, student, params)?;
    let default = pair.default_direction();
    let order = match choice.calibration() {
        Some(_) => PatchOrder::reference(default),
        None => choice.resolve(default, pair.stored_order.as_ref(), &pair.student_dir)?,
    };
    let ctx = ctx.unwrap_or_else(|| default_ctx(pair.teacher_cfg.max_position_embeddings));
    if ctx == 0 {
        return Err(Error::Invalid(
            "--fit needs a context of at least 1 position".into(),
        ));
    }
    choose(&pair, &order, budget, ctx)
}
