//! `--order first|last|auto` (chat, eval, patch): which patch order a
//! command follows, and the search behind `--order auto`.
//!
//! The search is greedy by calibration perplexity ([`greedy`]): from the
//! base model of the family's default order, each size restores the one
//! unit (a student block's teacher layers) that gives the lowest
//! perplexity on the calibration text. It measures what a user of that
//! size gets, including how blocks interact, at a cost of `P(P+1)/2 - 1`
//! forward passes over a short text. A per-block cosine between student
//! and teacher block outputs would cost one pass but ranks each block
//! alone, by a proxy, blind to how a replaced block feeds the ones after.

use std::path::{Path, PathBuf};

use super::common::{read_text, Pair};
use crate::boomerang::order::{greedy, segments, OrderSource};
use crate::boomerang::{Direction, PatchOrder};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::score;
use crate::progress::Progress;

/// Calibration tokens `--order auto` reads when not told.
pub const DEFAULT_CALIBRATION_TOKENS: usize = 2048;

/// `--calibration TEXT [--calibration-tokens N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calibration {
    pub text: PathBuf,
    /// The first `tokens` tokens of the text are scored.
    pub tokens: usize,
}

/// The order a command was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OrderChoice {
    /// No flag: the order the student stores, else the reference order of
    /// the teacher's family.
    #[default]
    Default,
    /// `--first`, `--last`, `--order first|last`: the reference's order.
    Reference(Direction),
    /// `--order auto`: searched on the calibration text when one is given,
    /// else the order the student stores.
    Auto(Option<Calibration>),
}

impl OrderChoice {
    /// From the flags: `--order`, `--first`, `--last`, `--calibration`,
    /// `--calibration-tokens`.
    pub fn from_flags(
        order: Option<&str>,
        first: bool,
        last: bool,
        calibration: Option<PathBuf>,
        tokens: Option<usize>,
    ) -> Result<OrderChoice> {
        let choice = match (order, first, last) {
            (Some(_), true, _) | (Some(_), _, true) | (None, true, true) => {
                return Err(Error::Invalid(
                    "give one patch order: --order, --first or --last".into(),
                ))
            }
            (None, true, false) => OrderChoice::Reference(Direction::First),
            (None, false, true) => OrderChoice::Reference(Direction::Last),
            (None, false, false) => OrderChoice::Default,
            (Some(o), false, false) if o.eq_ignore_ascii_case("auto") => OrderChoice::Auto(None),
            (Some(o), false, false) => OrderChoice::Reference(o.parse().map_err(|_| {
                Error::Invalid(format!(
                    "--order {o}: use first, last (the reference's orders) or auto (chosen on \
                     --calibration text)"
                ))
            })?),
        };
        match (choice, calibration) {
            (OrderChoice::Auto(_), Some(text)) => {
                let tokens = tokens.unwrap_or(DEFAULT_CALIBRATION_TOKENS);
                if tokens < 2 {
                    return Err(Error::Invalid(format!(
                        "--calibration-tokens {tokens}: perplexity needs at least 2 tokens"
                    )));
                }
                Ok(OrderChoice::Auto(Some(Calibration { text, tokens })))
            }
            (_, Some(_)) => Err(Error::Invalid(
                "--calibration chooses the order of --order auto; add --order auto".into(),
            )),
            (_, None) if tokens.is_some() => Err(Error::Invalid(
                "--calibration-tokens needs --order auto --calibration TEXT".into(),
            )),
            (choice, None) => Ok(choice),
        }
    }

    /// The calibration text when resolving means a search (GPU work).
    pub fn calibration(&self) -> Option<&Calibration> {
        match self {
            OrderChoice::Auto(c) => c.as_ref(),
            _ => None,
        }
    }

    /// The order, when no search is needed: the reference's, or the one
    /// `stored` in the student's `student_config.json`. `family_default`:
    /// the teacher family's reference direction.
    pub fn resolve(
        &self,
        family_default: Direction,
        stored: Option<&PatchOrder>,
        student_dir: &Path,
    ) -> Result<PatchOrder> {
        match self {
            OrderChoice::Reference(d) => Ok(PatchOrder::reference(*d)),
            OrderChoice::Default => Ok(stored
                .cloned()
                .unwrap_or_else(|| PatchOrder::reference(family_default))),
            OrderChoice::Auto(Some(_)) => Err(Error::Invalid(
                "internal: --order auto with --calibration is searched on the GPU".into(),
            )),
            OrderChoice::Auto(None) => stored.cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "--order auto: {} stores no patch order ({}); give --calibration TEXT to \
                     choose one, or make a student that keeps it with `boomgpu patch --order auto \
                     --calibration TEXT --out DIR`",
                    student_dir.display(),
                    crate::boomerang::student_config::FILE_NAME
                ))
            }),
        }
    }
}

/// One line about the order followed, for stderr.
pub fn describe(order: &PatchOrder, pair_plan: &crate::boomerang::PrunePlan) -> String {
    match &order.source {
        _ if order.is_reference() => {
            format!("patch order: {}-k (the reference's)", order.direction)
        }
        Some(src) => format!(
            "patch order: auto ({}-based), student layers {:?} in turn; chosen by {} on {} \
             ({} tokens)",
            order.direction,
            order.keys(pair_plan),
            src.method,
            src.calibration,
            src.tokens
        ),
        None => format!(
            "patch order: auto ({}-based), student layers {:?} in turn",
            order.direction,
            order.keys(pair_plan)
        ),
    }
}

/// The order a command follows for a pair on the GPU: the choice resolved,
/// searching when `--order auto --calibration` asks for it (windows of
/// `seq_len` tokens, default [`score::default_window`]). Says on stderr
/// which order it is.
pub fn for_pair(
    gpu: &Gpu,
    pair: &Pair,
    choice: &OrderChoice,
    seq_len: Option<usize>,
) -> Result<PatchOrder> {
    let default = Direction::default_for(pair.teacher.cfg.family);
    let order = match choice.calibration() {
        Some(c) => {
            let seq = seq_len
                .unwrap_or_else(|| score::default_window(pair.teacher.cfg.max_position_embeddings));
            search(gpu, pair, default, c, seq)?
        }
        None => choice.resolve(default, pair.stored_order.as_ref(), &pair.student.dir)?,
    };
    if !order.is_reference() || *choice != OrderChoice::Default {
        eprintln!("{}", describe(&order, &pair.plan));
    }
    Ok(order)
}

/// `--order auto`: choose the order greedily by the perplexity of the
/// first `c.tokens` tokens of the calibration text.
pub fn search(
    gpu: &Gpu,
    pair: &Pair,
    direction: Direction,
    c: &Calibration,
    seq_len: usize,
) -> Result<PatchOrder> {
    let tok = pair.teacher.tokenizer.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no tokenizer.json; --order auto needs it to read --calibration",
            pair.teacher.dir.display()
        ))
    })?;
    let mut ids = tok.encode(&read_text(&c.text)?, false)?;
    if ids.len() < 2 {
        return Err(Error::Invalid(format!(
            "--calibration {}: {} token(s); the search scores perplexity and needs at least 2",
            c.text.display(),
            ids.len()
        )));
    }
    ids.truncate(c.tokens);
    let seq_len = seq_len.min(ids.len()).max(2);
    let units = segments(&pair.plan, direction).units;
    let p = units.len();
    let calls = (p * (p + 1) / 2).saturating_sub(1);
    eprintln!(
        "--order auto: {p} units ({direction}-based), {calls} scorings of {} calibration tokens \
         from {}",
        ids.len(),
        c.text.display()
    );
    let mut bar = Progress::new("order", calls, "models");
    let mut done = 0;
    let (steps, trace) = greedy(p, |restored| {
        let order = PatchOrder::partial(direction, restored.to_vec());
        let (_, dec) = pair.patched(restored.len(), &order)?;
        let ppl = score::perplexity(gpu, &dec, &ids, seq_len, |_, _| {})?.perplexity;
        done += 1;
        bar.update(done, &format!("k={}: ppl {ppl:.3}", restored.len()));
        Ok(ppl)
    })?;
    drop(bar);
    for (i, s) in trace.iter().enumerate() {
        let u = &units[s.chosen];
        eprintln!(
            "  auto-{}: student layers {}-{} -> teacher {}-{}: calibration perplexity {:.4} \
             (the reference's next unit: {})",
            i + 1,
            u.student.start,
            u.student.end - 1,
            u.teacher.start,
            u.teacher.end - 1,
            s.perplexity,
            s.tried
                .iter()
                .min_by_key(|(x, _)| *x)
                .map_or("-".into(), |(_, v)| format!("{v:.4}"))
        );
    }
    let source = OrderSource {
        method: "greedy calibration perplexity".into(),
        calibration: c.text.file_name().map_or_else(
            || c.text.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        tokens: ids.len(),
        seq_len,
        perplexity: trace.iter().map(|s| s.perplexity).collect(),
    };
    PatchOrder::chosen(&pair.plan, direction, steps, Some(source))
}
